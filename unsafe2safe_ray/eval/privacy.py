"""Privacy metrics: FaceSim with re-detection, and TextSim next to the character error rate.

FaceSim follows the paper (for each original face, the best cosine similarity to any face found
in the output) but closes its loophole: an original face with no detected counterpart in the
output is counted in ``face_count_original`` and shows up in the re-detection rate, instead of
silently leaving the average. TextSim reports the paper's token-set similarity, which reads 1.0
whenever one word set contains the other, beside a normalized Levenshtein similarity and the
character error rate, which do not have that blind spot.
"""

from __future__ import annotations

import math

import numpy as np

from unsafe2safe_ray.detectors.geometry import box_iou
from unsafe2safe_ray.detectors.identity import cosine
from unsafe2safe_ray.detectors.text import normalize_text

# An output face counts as the counterpart of an original face when their boxes overlap this
# much. Editing keeps the layout, so a surviving face stays roughly in place.
COUNTERPART_MIN_IOU = 0.3


class FaceComparer:
    """Detects and embeds faces on both images with the verifier's detector and an identity
    embedder (``detectors.identity``), and compares every original face to the output."""

    def __init__(self, detector, embedder) -> None:
        self.detector = detector
        self.embedder = embedder

    def faces(self, image: np.ndarray) -> tuple[list, list[np.ndarray]]:
        """Detected faces (``detectors.faces.Face``) and one embedding per face."""
        found = self.detector.detect(image)
        vectors = self.embedder.embed(image, [f.bbox for f in found], [f.landmarks for f in found])
        return found, vectors

    def compare(self, original: np.ndarray, anonymized: np.ndarray) -> dict:
        """Per-image face fields (see ``compare_faces``)."""
        return compare_faces(*self.faces(original), *self.faces(anonymized), self.embedder)


def compare_faces(original: list, original_vecs: list[np.ndarray], anonymized: list,
                  anonymized_vecs: list[np.ndarray], embedder) -> dict:
    """Per-image FaceSim fields.

    - ``face_best_similarities``: per original face, the best cosine to any output face (NaN
      when the output has no face at all: that is the case the paper skipped);
    - ``face_count_redetected``: original faces with an overlapping output face;
    - ``face_identity_matches``: original faces whose best output face passes the embedder's
      same-identity rule;
    - ``face_sim``: the mean of the finite best similarities (the paper's number for the image).
    """
    best: list[float] = []
    redetected = matches = 0
    for face, vec in zip(original, original_vecs):
        if not anonymized:
            best.append(math.nan)
            continue
        sims = [cosine(vec, other) for other in anonymized_vecs]
        top = int(np.argmax(sims))
        best.append(sims[top])
        redetected += any(box_iou(face.bbox, other.bbox) >= COUNTERPART_MIN_IOU for other in anonymized)
        matches += bool(embedder.same_identity(vec, anonymized_vecs[top]))
    finite = [s for s in best if not math.isnan(s)]
    return {
        "face_count_original": len(original),
        "face_count_anonymized": len(anonymized),
        "face_count_redetected": redetected,
        "face_identity_matches": matches,
        "face_best_similarities": best,
        "face_sim": float(np.mean(finite)) if finite else math.nan,
        "face_boxes_original": [[round(float(v), 1) for v in f.bbox] for f in original],
    }


def compare_texts(original: str | None, anonymized: str | None) -> dict:
    """TextSim fields for one pair; all None when the original has no text (excluded).

    - ``text_sim_token_set``: rapidfuzz token_set_ratio / 100, the paper's TextSim (1.0 whenever
      one word set contains the other);
    - ``text_sim_levenshtein``: 1 - Levenshtein distance / longer length;
    - ``text_cer``: Levenshtein distance / original length, capped at 1 (share of the original
      characters that cannot be read back; 1 means all gone, and extra output text beyond that
      leaks nothing more).
    """
    from rapidfuzz import fuzz
    from rapidfuzz.distance import Levenshtein

    ref, hyp = normalize_text(original, keep_spaces=True), normalize_text(anonymized, keep_spaces=True)
    if not ref:
        return {"text_sim_token_set": None, "text_sim_levenshtein": None, "text_cer": None}
    return {
        "text_sim_token_set": fuzz.token_set_ratio(ref, hyp) / 100.0,
        "text_sim_levenshtein": 1.0 - Levenshtein.normalized_distance(ref, hyp),
        "text_cer": min(1.0, Levenshtein.distance(ref, hyp) / len(ref)),
    }
