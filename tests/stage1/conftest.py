"""Stage 1 test helpers: pipeline rows with real pixels, and configs for the stages."""

from __future__ import annotations

import numpy as np
import pytest

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config


def make_row(key: str, label: str | None = "dog", size=(40, 56), seed: int = 0) -> dict:
    """A live pipeline row with random pixels of ``size`` (height, width)."""
    row = records.new_row(key, 0, f"mem://{key}.png", label, seed)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    records.set_image(row, pixels)
    return row


@pytest.fixture()
def new_row():
    """The ``make_row`` factory."""
    return make_row


@pytest.fixture()
def rows():
    """Three live rows (two labelled, one not)."""
    return [make_row("a", "dog", seed=1), make_row("b", None, (64, 32), seed=2), make_row("c", "cat", seed=3)]


@pytest.fixture()
def fake_config():
    """The tiny profile with both Stage 1 engines switched to the fake engine."""
    return load_config("tiny", overrides=["caption.engine=fake", "instruct.engine=fake"])
