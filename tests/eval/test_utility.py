"""Utility: train on an anonymized output, test on an original test set, beside the raw model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("ray_local")


def _write_split(root: Path, per_class: int, seed: int, swap_labels: bool = False) -> None:
    """Class folders of colour-dominated noise: 'red' images are reddish, 'blue' bluish."""
    rng = np.random.default_rng(seed)
    for label, channel in (("red", 0), ("blue", 2)):
        folder = root / (("blue" if label == "red" else "red") if swap_labels else label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(40, 48, 3), dtype=np.uint8)
            image[:, :, channel] += 150
            Image.fromarray(image).save(folder / f"{label}_{seed}_{i}.png")


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job

    root = tmp_path_factory.mktemp("utility")
    _write_split(root / "train", per_class=6, seed=1)
    _write_split(root / "test", per_class=3, seed=2)
    _write_split(root / "test_swapped", per_class=3, seed=2, swap_labels=True)
    run_job(str(root / "train"), str(root / "train_out"), load_config("none"))
    return root


def test_linear_probe_on_pixels(splits):
    from unsafe2safe_ray.eval.utility import run_utility

    result = run_utility(str(splits / "train_out"), str(splits / "test"), features="pixels")
    assert result["classes"] == ["blue", "red"]
    assert result["train_images"] == 12 and result["test_images"] == 6
    assert result["accuracy_anonymized"] == 1.0 and result["accuracy_raw"] == 1.0
    assert result["accuracy_gap"] == 0.0
    # Labels really drive the score: the same images with swapped test labels score 0.
    swapped = run_utility(str(splits / "train_out"), str(splits / "test_swapped"), features="pixels")
    assert swapped["accuracy_anonymized"] == 0.0


def test_linear_probe_and_finetune_on_tiny_clip(splits):
    from unsafe2safe_ray.eval.utility import run_utility

    probe = run_utility(str(splits / "train_out"), str(splits / "test"), features="clip:tiny://clip")
    # Random CLIP features still carry the colour: the probe separates the classes.
    assert probe["accuracy_raw"] >= 0.8 and probe["accuracy_anonymized"] >= 0.8
    tuned = run_utility(str(splits / "train_out"), str(splits / "test"), features="clip:tiny://clip",
                        mode="finetune", epochs=1, lr=1e-3)
    assert 0.0 <= tuned["accuracy_anonymized"] <= 1.0 and 0.0 <= tuned["accuracy_raw"] <= 1.0
    assert tuned["mode"] == "finetune"


def test_unknown_mode_is_refused(splits):
    from unsafe2safe_ray.eval.utility import run_utility

    with pytest.raises(ValueError, match="unknown utility mode"):
        run_utility(str(splits / "train_out"), str(splits / "test"), features="pixels", mode="magic")
