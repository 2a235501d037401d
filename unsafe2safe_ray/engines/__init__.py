"""Text engines for Stage 1 and the evaluation judge.

``load_engine(kind, model)`` builds an in-process engine: ``"transformers"`` (a local or hub
checkpoint, CPU or one GPU) or ``"fake"`` (tests). The vLLM path is not an in-process engine:
``ray.data.llm`` processors transform whole Datasets, so the stages plug them in through
``Stage.apply`` with the helpers in ``engines.vllm_engine``.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray.engines.base import GenerationRequest, GenerationResult, TextEngine, fit_image

ENGINE_KINDS = ("transformers", "fake", "vllm")

__all__ = ["ENGINE_KINDS", "GenerationRequest", "GenerationResult", "TextEngine", "fit_image", "load_engine"]


def load_engine(kind: str, model: str, **kwargs: Any) -> TextEngine:
    """An engine of ``kind`` for ``model`` (hub id, local dir, ``s3://`` or ``tiny://name``).

    ``kwargs`` go to the engine's constructor (transformers: device, dtype, max_image_side,
    threads, trust_remote_code, seed; fake: script).
    """
    if kind == "fake":
        from unsafe2safe_ray.engines.fake import FakeEngine

        return FakeEngine(model, **kwargs)
    if kind == "transformers":
        from unsafe2safe_ray.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, **kwargs)  # resolved by unsafe2safe_ray.models
    if kind == "vllm":
        raise ValueError("the vllm engine runs as a ray.data.llm processor over a Dataset; "
                         "use the stage's apply(ds), not load_engine")
    raise ValueError(f"unknown engine kind {kind!r}; known: {', '.join(ENGINE_KINDS)}")
