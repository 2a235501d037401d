"""Stage 2 inside the real job: tiny pipelines in a Ray actor pool, written, committed, read back."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsafe2safe_ray import open_output
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local", "tiny_models")]

INPUTS = ("astronaut.jpg", "coffee.jpg", "chelsea.jpg")
# Every actor and task together must fit the 2 CPUs of the test Ray.
FIT_TWO_CPUS = ["edit.num_cpus=0.5", "ray.decode_num_cpus=0.25", "ray.write_num_cpus=0.25"]


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, sample_images) -> Path:
    root = tmp_path_factory.mktemp("stage2_in")
    for name in INPUTS:
        shutil.copy(sample_images / name, root / name)
    return root


def _tar_images(out: Path) -> dict[str, np.ndarray]:
    images = {}
    for tar_path in sorted((out / "images").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    data = tar.extractfile(member).read()
                    images[member.name.split(".")[0]] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return images


@pytest.mark.parametrize("editor", ["flowedit", "instruct-pix2pix", "kontext"])
def test_each_editor_runs_through_the_job_with_its_tiny_pipeline(editor, input_dir, sample_images, tmp_path):
    config = load_config("tiny", overrides=["stages=[edit]", f"edit.editor={editor}",
                                            "edit.edit_all=true", "io.shard_size=2", *FIT_TWO_CPUS])
    result = run_job(str(input_dir), str(tmp_path / "out"), config)
    assert result.counts == {"edited": 3, "passed": 0, "failed": 0}
    rows = open_output(str(tmp_path / "out")).captions().to_pylist()
    assert {r["editor"] for r in rows} == {editor}
    written = _tar_images(tmp_path / "out")
    originals = {r["key"]: np.asarray(Image.open(sample_images / Path(r["source_uri"]).name).convert("RGB"))
                 for r in rows}
    assert set(written) == set(originals)
    for key, pixels in written.items():
        assert pixels.shape == originals[key].shape  # resized back from the 128 px working size
        assert np.abs(pixels.astype(int) - originals[key].astype(int)).mean() > 10


def test_a_failing_editor_yields_failed_rows_and_no_pixels_in_the_tar(input_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("U2S_TEST_EDIT", "none")  # testing.flag_all flags every image, edits none
    config = load_config("tiny", overrides=["stages=[testing.flag_all, edit]", "edit.editor=fake:nan",
                                            "edit.verify=false", "verify.required_checks=[]", *FIT_TWO_CPUS])
    result = run_job(str(input_dir), str(tmp_path / "out"), config)
    assert result.counts == {"edited": 0, "passed": 0, "failed": 3}
    assert _tar_images(tmp_path / "out") == {}
    rows = open_output(str(tmp_path / "out")).captions().to_pylist()
    assert all("NonFiniteOutputError" in r["error"] for r in rows)
