"""End to end through the lead's job driver: the tiny profile's caption and instruct stages on
real sample images, with the real transformers engine and tiny random-weight models."""

from __future__ import annotations

import json
import shutil

import pytest

from unsafe2safe_ray import open_output, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.mark.timeout(300)
def test_inspect_run_fills_the_contract(tmp_path, tiny_models, sample_images):
    src = tmp_path / "in"
    src.mkdir()
    names = ["astronaut.jpg", "coffee.jpg", "id_card.png", "page.png"]
    for name in names:
        shutil.copy(sample_images / name, src / name)
    config = load_config("tiny", overrides=["io.shard_size=4", "io.read_batch_size=4", "stages=[caption, instruct]"])
    result = run_job(str(src), str(tmp_path / "out"), config, run_id="s1", stages="inspect")
    assert sum(result.counts.values()) == len(names)
    # The run report names the models the stages loaded and their revisions (issue 14).
    report = json.loads((tmp_path / "out" / "_runs" / "s1.json").read_text())
    assert [(m["stage"], m["model"], m["revision"]) for m in report["models"]] == [
        ("caption", "tiny://qwen2_5_vl", None), ("instruct", "tiny://causal_lm", None)]

    output = open_output(str(tmp_path / "out"))
    captions = output.captions().to_pylist()
    assert len(captions) == len(names)
    for row in captions:
        # Every row went through the VLM: either parsed fields, or a parse failure with a reason.
        assert row["caption_source"] == "tiny://qwen2_5_vl"
        assert row["prompt_version"].startswith("inspect-v")
        assert set(row["categories"]) <= set(records.CATEGORIES)
        if row["error"].startswith("caption:"):
            assert row["privacy_flag"] is True
        else:
            assert row["public_caption"]
            assert (row["edit_instruction"] is not None) == bool(row["privacy_flag"])
    private = {r["key"]: r for r in output.private().to_pylist()}
    assert set(private) == {r["key"] for r in captions}
    parsed = [r for r in captions if not r["error"].startswith("caption:")]
    assert parsed, "the constrained decoder should make tiny answers parse"
    for row in parsed:
        assert private[row["key"]]["private_caption"]
        assert isinstance(private[row["key"]]["privacy_review"], list)
