"""The real transformers engine on the tiny random-weight models: from_pretrained on a local
dir, batched generate with the xgrammar-constrained decoder, and the stages on top of it."""

from __future__ import annotations

import json
import time

import pytest

from unsafe2safe_ray import prompts, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.engines import GenerationRequest, load_engine
from unsafe2safe_ray.prompts.parsers import parse_inspection, parse_instruction
from unsafe2safe_ray.stages.base import run_rows
from unsafe2safe_ray.stages.caption import CaptionStage
from unsafe2safe_ray.stages.instruct import InstructStage

pytestmark = pytest.mark.slow
NAMES = list(records.CATEGORIES)
TINY_LIMITS = prompts.TextLimits(caption_chars=48, review_item_chars=32, max_review_items=2)


@pytest.fixture(scope="module")
def vlm(tiny_models):
    return load_engine("transformers", str(tiny_models / "qwen2_5_vl"), threads=1, max_image_side=112)


@pytest.fixture(scope="module")
def llm(tiny_models):
    return load_engine("transformers", str(tiny_models / "causal_lm"), threads=1)


def test_tiny_vlm_loads_from_a_local_dir(vlm, tiny_models):
    assert vlm.is_vision and vlm.model_id.endswith("qwen2_5_vl")
    assert (tiny_models / "qwen2_5_vl" / "config.json").exists()
    assert vlm.tokenizer.padding_side == "left"


def test_constrained_batch_generate_obeys_the_schema(vlm, new_row):
    schema = prompts.inspection_schema(NAMES, False, TINY_LIMITS)
    rows = [new_row(f"k{i}", label, size, seed=i)
            for i, (label, size) in enumerate([("dog", (40, 56)), (None, (200, 90)), ("cat", (64, 64)), ("car", (30, 120))])]
    requests = [GenerationRequest(prompts.inspection_messages(r["label"], prompts.default_criteria(), False, TINY_LIMITS),
                                  records.get_image(r), schema, max_new_tokens=prompts.max_answer_chars(schema))
                for r in rows]
    start = time.perf_counter()
    results = vlm.generate(requests)
    seconds = time.perf_counter() - start
    print(f"tiny VLM: 4 constrained answers in {seconds:.2f} s, tokens {[r.meta['new_tokens'] for r in results]}")
    for result in results:
        # Random weights, yet every answer is finished, valid JSON of exactly the schema's keys.
        assert result.finished, result.text
        obj = json.loads(result.text)
        assert list(obj) == list(schema["properties"])
        assert isinstance(obj["privacy_flag"], bool)
        assert set(obj["categories"]) <= set(NAMES)
        assert 1 <= len(obj["public_caption"]) <= 48 and len(obj["privacy_review"]) <= 2
        parse_inspection(result.text, result.finished, NAMES)


def test_without_enough_tokens_the_answer_is_reported_cut(vlm, new_row):
    schema = prompts.inspection_schema(NAMES, False, TINY_LIMITS)
    row = new_row("k")
    [result] = vlm.generate([GenerationRequest(
        prompts.inspection_messages("dog", prompts.default_criteria()), records.get_image(row), schema, max_new_tokens=8)])
    assert not result.finished and result.meta["new_tokens"] == 8


def test_constrained_text_llm(llm):
    schema = prompts.instruction_schema(True, prompts.TextLimits(instruction_chars=48, caption_chars=48))
    requests = [GenerationRequest(prompts.instruction_messages(c, "dog", True), None, schema, max_new_tokens=160)
                for c in ("a person walks a dog", "two people on a sofa", "a dog")]
    results = llm.generate(requests)
    for result in results:
        assert result.finished
        found = parse_instruction(result.text, True, combined_caption=True)
        assert found.edit_instruction and found.combined_caption


def test_stages_on_the_tiny_profile(tiny_models, new_row):
    config = load_config("tiny")
    caption, instruct = CaptionStage(config), InstructStage(config)
    caption.setup()
    instruct.setup()
    rows = [new_row(f"r{i}", "dog" if i % 2 else None, seed=i) for i in range(4)]
    out = run_rows(instruct, run_rows(caption, rows))
    statuses = [r["status"] for r in out]
    assert statuses.count(records.FAILED) == 0, [r["error"] for r in out]
    for row in out:
        assert row["caption_source"] == "tiny://qwen2_5_vl" and row["public_caption"]
        assert set(row["categories"]) <= set(NAMES)
        assert (row["edit_instruction"] is not None) == bool(row["privacy_flag"])
