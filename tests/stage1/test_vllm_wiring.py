"""The vLLM path, built on CPU without vllm: the ray.data.llm processors the stages build
(stage names, GPU resources, pool size), their preprocess/postprocess as pure functions, the
error-row normalization, and one run of the instruct processor over a real Dataset.

In the run, ONLY the vLLM engine stage itself is mocked (vllm cannot be installed here): a fake
UDF stands in for vLLMEngineStage's UDF. Preprocess, chat template, tokenizer, detokenizer,
postprocess and normalization are the real ray.data.llm / project code.
"""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pytest
from PIL import Image

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.engines.vllm_engine import (
    ERROR_COLUMN,
    SKIP_COLUMN,
    VLLMPostprocess,
    VLLMPreprocess,
    build_vllm_processor,
    normalize_vllm_rows,
    run_vllm_processor,
)
from unsafe2safe_ray.stages.caption import CaptionStage
from unsafe2safe_ray.stages.instruct import InstructStage


@pytest.fixture(scope="module")
def gpu_config(tiny_models):
    """gpu-fast with the tiny models as sources (the real ids cannot be downloaded here)."""
    return load_config("gpu-fast", overrides=[
        "caption.model=tiny://qwen2_5_vl", "caption.pool_size=2", "caption.max_image_side=64",
        "instruct.model=tiny://causal_lm", "instruct.max_new_tokens=100",
    ])


def test_gpu_profiles_name_the_real_models():
    fast, paper = load_config("gpu-fast"), load_config("gpu-paper")
    assert fast.caption.engine == fast.instruct.engine == "vllm"
    assert fast.caption.model == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert paper.caption.model == "OpenGVLab/InternVL2_5-8B"
    assert paper.instruct.model == "Qwen/Qwen3-4B-Instruct-2507"
    assert paper.caption.max_image_side == 448


def test_caption_processor_stages_and_resources(ray_local, gpu_config):
    stage = CaptionStage(gpu_config)
    processor = build_vllm_processor(gpu_config.caption, stage.vllm_call())
    assert processor.list_stage_names() == [
        "PrepareMultimodalStage", "ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    engine = processor.get_stage_by_name("vLLMEngineStage")
    kwargs = engine.map_batches_kwargs
    assert kwargs["num_gpus"] == 1  # tensor_parallel_size 1
    assert kwargs["compute"].min_size == kwargs["compute"].max_size == 2  # fixed pool (2, 2)
    ctor = engine.fn_constructor_kwargs
    assert ctor["should_continue_on_error"] is True
    assert ctor["engine_kwargs"]["max_model_len"] == 8192
    assert ctor["engine_kwargs"]["limit_mm_per_prompt"] == {"image": 1}
    assert ctor["engine_kwargs"]["gpu_memory_utilization"] == 0.85
    assert ctor["model"].endswith("qwen2_5_vl") and ctor["batch_size"] == 32
    for name in ("ChatTemplateStage", "TokenizeStage", "DetokenizeStage"):
        assert "num_gpus" not in processor.get_stage_by_name(name).map_batches_kwargs


def test_instruct_processor_is_text_only(ray_local, gpu_config):
    processor = build_vllm_processor(gpu_config.instruct, InstructStage(gpu_config).vllm_call())
    assert processor.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    assert processor.get_stage_by_name("vLLMEngineStage").map_batches_kwargs["compute"].max_size == 1


def test_caption_preprocess_builds_a_resized_image_request(gpu_config, new_row):
    stage = CaptionStage(gpu_config)
    call = stage.vllm_call()
    row = new_row("a", "dog", size=(100, 300))
    out = VLLMPreprocess(call)(row)
    assert out[SKIP_COLUMN] is False
    system, user = out["messages"]
    assert isinstance(system["content"], str) and "privacy auditor" in system["content"]
    image_part, text_part = user["content"]
    url = image_part["image_url"]["url"]
    assert image_part["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (64, 21)  # longer side = max_image_side, aspect kept
    assert "image of a dog" in text_part["text"]
    params = out["sampling_params"]
    assert params["max_tokens"] == 1024 and params["temperature"] == 0.0
    assert json.loads(params["structured_outputs"]["json"]) == stage.schema
    # The preprocess output holds no pixels of its own beyond the data URL.
    assert "image" not in out


def test_preprocess_skips_failed_and_unflagged_rows(gpu_config, new_row):
    failed = records.fail(new_row("f"), "decode: broken")
    assert VLLMPreprocess(CaptionStage(gpu_config).vllm_call())(failed)[SKIP_COLUMN] is True
    instruct_call = InstructStage(gpu_config).vllm_call()
    unflagged = dict(new_row("u"), privacy_flag=False, public_caption="a park")
    skipped = VLLMPreprocess(instruct_call)(unflagged)
    assert skipped[SKIP_COLUMN] is True and skipped["sampling_params"]["max_tokens"] == 1
    flagged = dict(new_row("g"), privacy_flag=True, public_caption="a person", private_caption="SECRET")
    request = VLLMPreprocess(instruct_call)(flagged)
    assert request[SKIP_COLUMN] is False and "SECRET" not in json.dumps(request["messages"])
    assert all(isinstance(m["content"], str) for m in request["messages"])


def _processor_row(row, **extra):
    # What postprocess receives: the pipeline row plus the processor's own columns.
    return {**row, "messages": [{"role": "user", "content": "x"}], "prompt": "x", "generated_tokens": [1, 2],
            "time_taken_llm": 0.5, **extra}


def test_caption_postprocess_parses_and_returns_only_pipeline_columns(gpu_config, new_row):
    call = CaptionStage(gpu_config).vllm_call()
    answer = json.dumps({"privacy_flag": True, "categories": ["people"], "privacy_review": ["a face: identity"],
                         "private_caption": "Ann", "public_caption": "a person",
                         "regions": [{"category": "people", "bbox": [0, 0, 42, 28]}]})
    # Qwen2.5-VL states boxes in pixels of its resized image: 60x40 -> 84x56 (smart_resize).
    row = new_row("a", size=(40, 60))
    out = VLLMPostprocess(call)(_processor_row(row, generated_text=answer, num_generated_tokens=60, **{SKIP_COLUMN: False}))
    assert list(out) == list(records.PIPELINE_COLUMNS)
    assert out["privacy_flag"] is True and out["public_caption"] == "a person"
    assert out["regions"] == [{"category": "people", "bbox": [0, 0, 30, 20], "score": 1.0, "source": "vlm"}]
    assert out["image"] == row["image"]
    # An answer that used every allowed token and does not parse is truncated -> failed, flagged.
    cut = VLLMPostprocess(call)(_processor_row(new_row("b"), generated_text='{"privacy_flag": fa',
                                               num_generated_tokens=1024, **{SKIP_COLUMN: False}))
    assert cut["status"] == records.FAILED and cut["privacy_flag"] is True
    assert "truncated" in cut["error"] and cut["raw_output"] == '{"privacy_flag": fa'
    # A skipped live row without pixels fails instead of passing through unflagged.
    nopix = dict(new_row("c"), image=None)
    out = VLLMPostprocess(call)(_processor_row(nopix, generated_text="", **{SKIP_COLUMN: True}))
    assert out["status"] == records.FAILED and out["privacy_flag"] is True


def test_normalize_turns_inference_errors_into_failed_flagged_rows(new_row):
    ok = dict(new_row("ok"), privacy_flag=False, public_caption="a park")
    bad = dict(new_row("bad"))
    # Error rows bypass postprocess, so they still carry the processor's columns.
    table = pa.Table.from_pylist([
        {**ok, ERROR_COLUMN: ""},
        {**bad, ERROR_COLUMN: "ValueError: prompt too long", "prompt": "p", "generated_text": ""},
    ])
    out = normalize_vllm_rows(table, "caption", flag_on_error=True)
    assert out.schema == records.PIPELINE_SCHEMA
    first, second = out.to_pylist()
    assert first["status"] == records.PENDING and first["image"] is not None and first["privacy_flag"] is False
    assert second["status"] == records.FAILED and second["privacy_flag"] is True and second["image"] is None
    assert second["error"] == "caption: inference error: ValueError: prompt too long"


@pytest.mark.timeout(180)
def test_instruct_processor_runs_over_a_dataset_with_the_engine_mocked(ray_local, gpu_config, new_row):
    import ray
    from ray.llm._internal.batch.stages.base import StatefulStageUDF
    from transformers import AutoTokenizer

    from unsafe2safe_ray.models import resolve_model_source

    model_dir = resolve_model_source("tiny://causal_lm")

    class FakeVLLMEngineUDF(StatefulStageUDF):
        """MOCK of the vLLM engine only: answers each tokenized prompt with a scripted JSON."""

        def __init__(self, data_column, expected_input_keys, **engine_kwargs):
            super().__init__(data_column, expected_input_keys)
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

        async def udf(self, batch):
            for row in batch:
                prompt = self.tokenizer.decode(row["tokenized_prompt"])
                params = row["sampling_params"]
                if params["max_tokens"] == 1:  # a skipped row's placeholder request
                    yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "generated_tokens": [5],
                           "num_generated_tokens": 1, ERROR_COLUMN: ""}
                    continue
                schema = json.loads(params["structured_outputs"]["json"])
                assert schema["required"][0] == "edit_instruction" and "SECRET" not in prompt
                if "ERROR" in prompt:
                    yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "generated_tokens": [],
                           "num_generated_tokens": 0, ERROR_COLUMN: "RuntimeError: engine failed"}
                    continue
                text = json.dumps({"edit_instruction": "give the person grey hair and glasses",
                                   "combined_caption": "a person with grey hair"})
                tokens = self.tokenizer.encode(text)
                yield {self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN], "generated_tokens": tokens,
                       "num_generated_tokens": len(tokens), "time_taken_llm": 0.01, ERROR_COLUMN: ""}

    stage = InstructStage(gpu_config)
    call = stage.vllm_call()
    processor = build_vllm_processor(gpu_config.instruct, call)
    engine_stage = processor.get_stage_by_name("vLLMEngineStage")
    engine_stage.fn = FakeVLLMEngineUDF
    kwargs = dict(engine_stage.map_batches_kwargs)
    kwargs.pop("num_gpus", None)  # no GPU here; the real stage asks for one (asserted above)
    kwargs["compute"] = ray.data.ActorPoolStrategy(size=1)
    # Plain assignment would rerun the stage's validator, which puts num_gpus back.
    engine_stage.__dict__["map_batches_kwargs"] = kwargs
    assert "num_gpus" not in engine_stage.get_dataset_map_batches_kwargs(1, "__data")

    rows = [
        dict(new_row("a"), privacy_flag=True, public_caption="a person on a bench"),
        dict(new_row("b"), privacy_flag=False, public_caption="an empty park"),
        dict(new_row("c"), privacy_flag=True, public_caption="ERROR a person"),
        records.fail(new_row("d"), "decode: broken"),
    ]
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows, schema=records.PIPELINE_SCHEMA))
    out = {r["key"]: r for r in run_vllm_processor(ds, processor, call).take_all()}
    assert sorted(out) == ["a", "b", "c", "d"]
    assert set(out["a"]) == set(records.PIPELINE_COLUMNS)
    assert out["a"]["edit_instruction"] == "give the person grey hair and glasses"
    assert out["a"]["combined_caption"] == "a person with grey hair" and out["a"]["image"] == rows[0]["image"]
    assert out["b"]["edit_instruction"] is None and out["b"]["status"] == records.PENDING
    assert out["c"]["status"] == records.FAILED and "engine failed" in out["c"]["error"]
    assert out["d"]["error"] == "decode: broken"
