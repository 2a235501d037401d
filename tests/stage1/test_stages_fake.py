"""CaptionStage and InstructStage on row dicts, with the fake engine (fast unit tests)."""

from __future__ import annotations

import json

from unsafe2safe_ray import records
from unsafe2safe_ray.engines.base import GenerationResult
from unsafe2safe_ray.engines.fake import FakeEngine
from unsafe2safe_ray.stages.base import run_rows
from unsafe2safe_ray.stages.caption import CaptionStage
from unsafe2safe_ray.stages.instruct import InstructStage


def _answer(flag: bool, categories=(), public="a person sits on a bench"):
    return json.dumps({
        "privacy_flag": flag, "categories": list(categories), "privacy_review": ["a face: identifies"],
        "private_caption": "Ann Smith on a bench", "public_caption": public,
    })


def _caption_stage(config, script):
    stage = CaptionStage(config)
    stage.setup()
    assert isinstance(stage.engine, FakeEngine)
    stage.engine.script = script
    return stage


def test_caption_fills_the_contract_columns(fake_config, rows):
    answers = {"a": _answer(True, ["people"]), "b": _answer(False), "c": _answer(False, ["health"])}
    stage = _caption_stage(fake_config, None)
    keys = iter(r["key"] for r in rows)
    stage.engine.script = lambda req: answers[next(keys)]
    out = run_rows(stage, rows)
    assert [r["status"] for r in out] == [records.PENDING] * 3
    assert [r["privacy_flag"] for r in out] == [True, False, True]
    assert out[0]["categories"] == ["people"]
    assert out[2]["categories"] == ["health"]
    assert out[0]["privacy_review"] == ["a face: identifies"]
    assert out[0]["private_caption"] == "Ann Smith on a bench"
    assert out[1]["public_caption"] == "a person sits on a bench"
    assert all(r["caption_source"] == "tiny://qwen2_5_vl" for r in out)
    assert all(r["prompt_version"] == stage.prompt_version for r in out)
    assert all(r["image"] is not None and r["raw_output"] is None for r in out)
    # The engine got the pixels, the schema and the label in the prompt.
    calls = stage.engine.calls
    assert calls[0].image.shape == (40, 56, 3) and calls[0].json_schema == stage.schema
    assert "image of a dog" in calls[0].messages[1]["content"][1]["text"]
    assert "image of a" not in calls[1].messages[1]["content"][1]["text"]
    # The table round-trips through the pipeline schema.
    assert records.PIPELINE_SCHEMA.names == list(out[0])


def test_unparseable_answers_fail_flagged_and_keep_raw_text(fake_config, new_row):
    cases = {
        "malformed": GenerationResult('{"privacy_flag": fals'),
        "empty": GenerationResult(""),
        "truncated": GenerationResult('{"privacy_flag": false, "categories": [], "private_caption": "a b', finished=False),
        "no_caption": GenerationResult('{"privacy_flag": false, "categories": []}'),
    }
    rows = [new_row(k, seed=i) for i, k in enumerate(cases)]
    stage = _caption_stage(fake_config, None)
    keys = iter(cases)
    stage.engine.script = lambda req: cases[next(keys)]
    out = run_rows(stage, rows)
    for row, (key, result) in zip(out, cases.items()):
        assert row["status"] == records.FAILED, key
        assert row["privacy_flag"] is True, key  # never an unflagged image
        assert row["image"] is None
        assert row["raw_output"] == result.text
        assert row["error"].startswith("caption: ")
    assert "truncated" in out[2]["error"] and "empty" in out[1]["error"]


def test_failed_rows_skip_caption(fake_config, rows):
    records.fail(rows[1], "decode: broken file")
    stage = _caption_stage(fake_config, None)
    out = run_rows(stage, rows)
    assert len(stage.engine.calls) == 2
    assert out[1]["error"] == "decode: broken file" and out[1]["caption_source"] is None


def test_fake_default_answer_is_flagged(fake_config, rows):
    # The fake's schema-derived answer must never make an image look safe.
    out = run_rows(_caption_stage(fake_config, None), rows)
    assert all(r["privacy_flag"] for r in out)


def test_instruct_runs_only_on_flagged_rows_and_reads_only_the_public_caption(fake_config, rows):
    rows[0].update(privacy_flag=True, public_caption="a person on a bench", private_caption="SECRET Ann")
    rows[1].update(privacy_flag=False, public_caption="a park")
    rows[2].update(privacy_flag=True, public_caption="a cat on a sofa", private_caption="SECRET Bob",
                   privacy_review='["SECRET review"]')
    stage = InstructStage(fake_config)
    stage.setup()
    stage.engine.script = lambda req: json.dumps(
        {"edit_instruction": "make the person older", "combined_caption": "an older person on a bench"})
    out = run_rows(stage, rows)
    assert len(stage.engine.calls) == 2
    for call in stage.engine.calls:
        text = json.dumps(call.messages)
        assert "SECRET" not in text and call.image is None
    assert "a person on a bench" in json.dumps(stage.engine.calls[0].messages)
    assert out[0]["edit_instruction"] == "make the person older"
    assert out[0]["combined_caption"] == "an older person on a bench"  # tiny profile asks for it
    assert out[1]["edit_instruction"] is None and out[1]["status"] == records.PENDING


def test_instruct_failures_are_rows(fake_config, rows):
    for row in rows:
        row.update(privacy_flag=True, public_caption="a person")
    rows[2]["public_caption"] = ""
    stage = InstructStage(fake_config)
    stage.setup()
    answers = iter([GenerationResult("not json"), GenerationResult('{"edit_instruction": "chan', finished=False)])
    stage.engine.script = lambda req: next(answers)
    out = run_rows(stage, rows)
    assert [r["status"] for r in out] == [records.FAILED] * 3
    assert out[0]["raw_output"] == "not json" and "no JSON object" in out[0]["error"]
    assert "truncated" in out[1]["error"]
    assert out[2]["error"] == "instruct: the flagged row has no public caption"


def test_edit_all_instructs_unflagged_rows(rows):
    from unsafe2safe_ray.config import load_config

    config = load_config("tiny", overrides=["instruct.engine=fake", "edit.edit_all=true"])
    for row in rows:
        row.update(privacy_flag=False, public_caption="a park")
    stage = InstructStage(config)
    stage.setup()
    out = run_rows(stage, rows)
    assert len(stage.engine.calls) == 3 and all(r["edit_instruction"] for r in out)


def test_a_detector_hit_keeps_the_row_flagged_when_the_vlm_calls_it_safe(fake_config, rows):
    """The detect stage runs before the VLM in the generative profiles: its hit is a safety
    net, so one model's miss is not a leak; the row records who flagged it."""
    from unsafe2safe_ray.stages.detect import fill_detection_columns

    face = {"category": "people", "bbox": [2, 2, 20, 20], "score": 0.9, "source": "detector", "kind": "face"}
    fill_detection_columns(rows[0], [face], fake_config)
    fill_detection_columns(rows[1], [], fake_config)
    answers = iter([_answer(False), _answer(False), _answer(True, ["health"])])
    stage = _caption_stage(fake_config, lambda req: next(answers))
    out = run_rows(stage, rows)
    assert [r["privacy_flag"] for r in out] == [True, False, True]
    assert [r["flagged_by"] for r in out] == ["detector", "", "vlm"]
    assert out[0]["categories"] == ["people"]
    assert out[0]["regions"][0]["bbox"] == [2, 2, 20, 20]  # the verifier checks it
