"""A deterministic fake editor for unit tests, with injectable failures.

The edit is a pure function of (pixels, seed, strength, prompts): pixels are inverted and mixed
with seed-dependent noise, so tests can assert that an image changed, that the same seed gives
the same pixels, and that another seed or strength gives different ones, without any model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from unsafe2safe_ray.editors.base import EditRequest, Editor, NonFiniteOutputError, check_batch

FAILURES = ("none", "nan", "oom", "error", "oom-large")


class FakeOutOfMemoryError(MemoryError):
    """Stands in for ``torch.OutOfMemoryError`` without importing torch."""


class FakeEditor(Editor):
    """Deterministic fake. ``failure`` injects what the edit stage must survive:

    - ``nan``: every output is non-finite (NonFiniteOutputError), at any size;
    - ``oom``: every call runs out of memory;
    - ``oom-large``: calls with more than one image or a side above ``large_side`` run out of
      memory, so the stage's "retry alone at lower resolution" path succeeds;
    - ``error``: every call raises RuntimeError.
    ``calls`` records (batch size, height, width, strength) per call.
    """

    name = "fake"
    size_multiple = 16

    def __init__(self, failure: str = "none", large_side: int = 64) -> None:
        if failure not in FAILURES:
            raise ValueError(f"unknown fake failure {failure!r}; known: {FAILURES}")
        self.failure = failure
        self.large_side = large_side
        self.calls: list[tuple[int, int, int, int]] = []

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        """Invert and add seed noise; or fail as configured."""
        height, width, strength = check_batch(requests)
        self.calls.append((len(requests), height, width, strength))
        if self.failure == "nan":
            raise NonFiniteOutputError("fake editor produced NaN")
        if self.failure == "oom":
            raise FakeOutOfMemoryError("fake editor ran out of memory")
        if self.failure == "oom-large" and (len(requests) > 1 or max(height, width) > self.large_side):
            raise FakeOutOfMemoryError(f"fake editor ran out of memory at {height}x{width}x{len(requests)}")
        if self.failure == "error":
            raise RuntimeError("fake editor failed")
        return [self._edit_one(req) for req in requests]

    @staticmethod
    def _edit_one(req: EditRequest) -> np.ndarray:
        text = f"{req.source_prompt}|{req.target_prompt}|{req.instruction}|{req.strength}"
        salt = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        rng = np.random.default_rng([int(req.seed), salt])
        noise = rng.integers(0, 64, size=req.image.shape, dtype=np.int16)
        inverted = 255 - req.image.astype(np.int16)
        return np.clip(inverted - 32 + noise, 0, 255).astype(np.uint8)
