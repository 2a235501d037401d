"""``--stages inspect`` then ``--stages edit``: Stage 1 and Stage 2 as separate runs (cpu profile)."""

from __future__ import annotations

import shutil

import pytest

from unsafe2safe_ray import open_output
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job
from unsafe2safe_ray.stages.load_captions import INSPECT_ONLY_ERROR

pytestmark = pytest.mark.usefixtures("ray_local")


def test_inspect_then_edit_reuses_the_captions(tmp_path, sample_images):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("astronaut.jpg", "chelsea.jpg"):
        shutil.copy(sample_images / name, src / name)
    cfg = load_config("cpu", overrides=["io.shard_size=2"])

    inspected = run_job(str(src), str(tmp_path / "stage1"), cfg, stages="inspect", run_id="s1")
    assert inspected.counts == {"edited": 0, "passed": 1, "failed": 1}
    stage1 = {r["source_uri"].rsplit("/", 1)[-1]: r for r in open_output(str(tmp_path / "stage1")).captions().to_pylist()}
    astronaut = stage1["astronaut.jpg"]
    assert astronaut["privacy_flag"] and astronaut["error"] == INSPECT_ONLY_ERROR and astronaut["image_tar"] == ""
    assert stage1["chelsea.jpg"]["status"] == "passed"

    edited = run_job(str(tmp_path / "stage1"), str(tmp_path / "stage2"), cfg, stages="edit", run_id="s2")
    assert edited.counts == {"edited": 1, "passed": 1, "failed": 0}
    stage2 = {r["source_uri"].rsplit("/", 1)[-1]: r for r in open_output(str(tmp_path / "stage2")).captions().to_pylist()}
    assert stage2["astronaut.jpg"]["status"] == "edited"
    for column in ("public_caption", "edit_instruction", "regions", "categories"):
        assert stage2["astronaut.jpg"][column] == astronaut[column]
    private = open_output(str(tmp_path / "stage2")).private().to_pylist()
    assert any(p["private_caption"] for p in private)
