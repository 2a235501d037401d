"""``utility --mode mae-finetune``: the paper's MAE classifier recipe as a Ray Train job, on a
tiny MAE ViT built from config, a few steps on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local", "tiny_models")]

SETTINGS = ["utility.mae_model=tiny://vit_mae", "utility.image_size=32", "utility.epochs=1",
            "utility.warmup_epochs=0", "utility.batch_size=2", "utility.bf16=false",
            "utility.cpus_per_worker=0.5"]


def test_mae_finetune_trains_both_classifiers_and_names_its_recipe(triplets):
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.train.mae import run_mae_finetune

    # Train on the anonymized output of three labelled images, test on their originals.
    config = load_config("none", overrides=SETTINGS)
    result = run_mae_finetune(str(triplets / "out"), str(triplets / "in"), config)
    assert result["mode"] == "mae-finetune"
    assert result["settings"]["mae_model"] == "tiny://vit_mae" and result["settings"]["epochs"] == 1
    assert result["classes"] == ["camera", "cat", "cup"]
    assert result["train_images"] == 3 and result["test_images"] == 3
    # Three images in batches of two, one epoch: two optimizer steps.
    assert result["optimizer_steps"] == 2
    for name in ("anonymized", "raw"):
        assert 0.0 <= result[f"accuracy_{name}"] <= 1.0
        assert np.isfinite(result["train_loss"][f"train_loss_last_{name}"])
    # MAE's scaling rule: base rate x effective batch / 256.
    assert result["learning_rate"] == pytest.approx(5e-4 * 2 / 256)
    json.dumps(result)  # the CLI writes it as JSON
