"""Tiny random-weight models built from config: the shipped ``tiny`` profile (CPU smoke runs)
and the test suite load them like any checkpoint.

A model is named ``tiny://<name>`` (``builders.BUILDERS``); ``unsafe2safe_ray.models`` resolves
that to ``tiny_root() / name`` (``$U2S_TINY_DIR`` or ``~/.cache/unsafe2safe_ray/tiny``), building
it on first use under a lock. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from unsafe2safe_ray.tiny_models.builders import BUILDERS

__all__ = ["BUILDERS", "build_tiny_model", "tiny_root"]


def tiny_root() -> Path:
    return Path(os.environ.get("U2S_TINY_DIR", Path.home() / ".cache" / "unsafe2safe_ray" / "tiny"))


def build_tiny_model(name: str, path: Path) -> None:
    """Build the tiny model ``name`` into the (empty) folder ``path``."""
    builder = BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(BUILDERS)}")
    builder(Path(path))
