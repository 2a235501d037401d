"""Registry of tiny-model builders: name -> function(dir). Each builder saves a model that the
real code loads with ``from_pretrained(dir)``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable


def _lazy(module: str, fn: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        import importlib

        getattr(importlib.import_module(module), fn)(path)

    return build


BUILDERS: dict[str, Callable[[Path], None]] = {
    # Stage 1 (issue 4): unsafe2safe_ray/tiny_models/text.py
    "qwen2_5_vl": _lazy("unsafe2safe_ray.tiny_models.text", "build_tiny_qwen2_5_vl"),
    "causal_lm": _lazy("unsafe2safe_ray.tiny_models.text", "build_tiny_causal_lm"),
    # HF-native InternVL (issue 14): the transformers engine's InternVL path
    "internvl": _lazy("unsafe2safe_ray.tiny_models.text", "build_tiny_internvl"),
    # Stage 2 (issue 5): unsafe2safe_ray/tiny_models/diffusion.py
    "instruct_pix2pix": _lazy("unsafe2safe_ray.tiny_models.diffusion", "build_tiny_instruct_pix2pix"),
    "sd3": _lazy("unsafe2safe_ray.tiny_models.diffusion", "build_tiny_sd3"),
    "flux_kontext": _lazy("unsafe2safe_ray.tiny_models.diffusion", "build_tiny_flux_kontext"),
    # Evaluation (issue 6): unsafe2safe_ray/tiny_models/clip.py
    "clip": _lazy("unsafe2safe_ray.tiny_models.clip", "build_tiny_clip"),
    # Utility, MAE fine-tune (issue 16): unsafe2safe_ray/tiny_models/vit.py
    "vit_mae": _lazy("unsafe2safe_ray.tiny_models.vit", "build_tiny_vit_mae"),
}
