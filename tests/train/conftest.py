"""Ray Train fixtures: one triplet set made by the job itself, shared by the editor fine-tune and
the utility classifier tests."""

from __future__ import annotations

import shutil

import pytest

from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job

from _train_inputs import FIT_TWO_CPUS, INPUTS


@pytest.fixture(scope="session")
def triplets(tmp_path_factory, sample_images, ray_local, tiny_models):
    """ROOT/in (class folders) run through the job into ROOT/out: every image flagged, captioned,
    given an instruction (fake engines), edited (fake editor) and verified."""
    root = tmp_path_factory.mktemp("train")
    for label, name in INPUTS.items():
        (root / "in" / label).mkdir(parents=True)
        shutil.copy(sample_images / name, root / "in" / label / name)
    config = load_config("tiny", overrides=["caption.engine=fake", "instruct.engine=fake", "edit.editor=fake",
                                            *FIT_TWO_CPUS])
    result = run_job(str(root / "in"), str(root / "out"), config)
    assert result.counts["edited"] == len(INPUTS)
    return root
