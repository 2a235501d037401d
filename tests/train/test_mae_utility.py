"""``utility --mode mae-finetune``: the paper's MAE classifier recipe as a Ray Train job, on a
tiny MAE ViT built from config, a few steps on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local", "tiny_models")]

SETTINGS = ["utility.mae_model=tiny://vit_mae", "utility.image_size=32", "utility.epochs=2",
            "utility.warmup_epochs=1", "utility.batch_size=4", "utility.bf16=false",
            "utility.cpus_per_worker=0.5"]


def _write_split(root: Path, per_class: int, seed: int) -> None:
    """Class folders of colour-dominated noise: 'red' images are reddish, 'blue' bluish."""
    rng = np.random.default_rng(seed)
    for label, channel in (("red", 0), ("blue", 2)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(40, 48, 3), dtype=np.uint8)
            image[:, :, channel] += 150
            Image.fromarray(image).save(folder / f"{label}_{seed}_{i}.png")


def test_mae_finetune_trains_both_classifiers_and_names_its_recipe(tmp_path):
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job
    from unsafe2safe_ray.train.mae import run_mae_finetune

    _write_split(tmp_path / "train", per_class=4, seed=1)
    _write_split(tmp_path / "test", per_class=2, seed=2)
    run_job(str(tmp_path / "train"), str(tmp_path / "train_out"), load_config("none"))
    config = load_config("none", overrides=SETTINGS)
    result = run_mae_finetune(str(tmp_path / "train_out"), str(tmp_path / "test"), config)
    assert result["mode"] == "mae-finetune"
    assert result["settings"]["mae_model"] == "tiny://vit_mae" and result["settings"]["epochs"] == 2
    assert result["classes"] == ["blue", "red"]
    assert result["train_images"] == 8 and result["test_images"] == 4
    # 8 images, batch 4, two epochs: four optimizer steps per classifier.
    assert result["optimizer_steps"] == 4
    for name in ("anonymized", "raw"):
        assert 0.0 <= result[f"accuracy_{name}"] <= 1.0
        assert np.isfinite(result["train_loss"][f"train_loss_last_{name}"])
    # MAE's scaling rule: base rate x effective batch / 256.
    assert result["learning_rate"] == pytest.approx(5e-4 * 4 / 256)
    json.dumps(result)  # the CLI writes it as JSON
