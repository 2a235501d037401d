"""The Unsafe2Safe paper's reported numbers, for the report's comparison columns.

They come from a secondary summary of the paper (see the project's paper digest) and are
approximate; the report labels them as such. Keys are our summary keys measuring the same thing.
"""

from __future__ import annotations

PAPER_SOURCE = "Unsafe2Safe (Dinh and Jin, CVPR 2026), via a secondary summary: approximate"

PAPER_NUMBERS: dict[str, dict[str, float]] = {
    "original": {"vlm_score": 7.70, "face_sim": 1.000, "text_sim_token_set": 1.000, "race_entropy_paper": 0.438,
                 "caltech101_accuracy": 94.28},
    "DeepPrivacy2": {"vlm_score": 11.05, "face_sim": 0.392, "text_sim_token_set": 0.957, "race_entropy_paper": 0.732,
                     "caltech101_accuracy": 94.60},
    "U2S FlowEdit": {"vlm_score": 13.97, "face_sim": 0.366, "text_sim_token_set": 0.524, "race_entropy_paper": 0.765,
                     "caltech101_accuracy": 94.79},
}
