"""Issue 14, Stage 1: remote code reaches every ray.data.llm stage that loads the model, only at a
pinned revision; vLLM's JSON allows no free whitespace; Qwen2.5-VL boxes are read in their own
frame; the transformers engine loads HF-native InternVL and names it for ``internvl_chat`` repos.

vllm cannot be installed here: the multimodal preparation stage is constructed with a stub
``vllm.config.ModelConfig`` that, like the real one, refuses a remote-code model without
``trust_remote_code``.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from unsafe2safe_ray import records
from unsafe2safe_ray.config import ConfigError, load_config
from unsafe2safe_ray.engines.vllm_engine import build_vllm_processor, sampling_params
from unsafe2safe_ray.stages.caption import CaptionStage


@pytest.fixture(scope="module")
def paper_config(tiny_models):
    """gpu-paper (InternVL2.5 with trust_remote_code and a revision) with a tiny local model."""
    return load_config("gpu-paper", overrides=["caption.model=tiny://qwen2_5_vl", "caption.max_image_side=64"])


class _StubModelConfig:
    """Stands in for vllm.config.ModelConfig: an internvl_chat-style repo needs remote code."""

    def __init__(self, model, trust_remote_code=False, **kwargs):
        if not trust_remote_code:
            raise ValueError(f"{model} requires trust_remote_code=True")
        self.model, self.kwargs = model, dict(kwargs, trust_remote_code=trust_remote_code)


def test_multimodal_preparation_gets_remote_code_and_the_revision(ray_local, paper_config, monkeypatch):
    processor = build_vllm_processor(paper_config.caption, CaptionStage(paper_config).vllm_call())
    stage = processor.get_stage_by_name("PrepareMultimodalStage")
    kwargs = stage.fn_constructor_kwargs["model_config_kwargs"]
    assert kwargs["trust_remote_code"] is True and kwargs["revision"] == paper_config.caption.revision
    assert kwargs["mm_processor_kwargs"] == {"max_dynamic_patch": 1} and kwargs["max_model_len"] == 8192
    stub = types.ModuleType("vllm.config")
    stub.ModelConfig = _StubModelConfig
    monkeypatch.setitem(sys.modules, "vllm", types.ModuleType("vllm"))
    monkeypatch.setitem(sys.modules, "vllm.config", stub)
    udf = stage.fn(data_column="__data", expected_input_keys=["messages"], **stage.fn_constructor_kwargs)
    assert udf.model_config.kwargs["trust_remote_code"] is True
    assert udf.model_config.kwargs["code_revision"] == paper_config.caption.revision


def test_tokenizer_stages_and_the_engine_load_the_pinned_revision(ray_local, paper_config, monkeypatch, tiny_models):
    from unsafe2safe_ray.engines import vllm_engine
    from unsafe2safe_ray.models import resolve_model_source

    config = load_config("gpu-paper", overrides=["caption.revision=0123456789abcdef0123456789abcdef01234567",
                                                 "caption.model=tiny://qwen2_5_vl"])
    processor = build_vllm_processor(config.caption, CaptionStage(config).vllm_call())
    revision = config.caption.revision
    for name in ("ChatTemplateStage", "TokenizeStage", "DetokenizeStage"):
        stage = processor.get_stage_by_name(name)
        assert stage.fn.__name__.startswith("Pinned"), name
        assert stage.fn_constructor_kwargs["revision"] == revision
        assert stage.fn_constructor_kwargs["trust_remote_code"] is True
    engine = processor.get_stage_by_name("vLLMEngineStage").fn_constructor_kwargs["engine_kwargs"]
    assert engine["revision"] == engine["code_revision"] == engine["tokenizer_revision"] == revision
    # A hub id is fetched at the pinned revision (config, tokenizer, remote code; no weights).
    calls = []
    local = resolve_model_source("tiny://qwen2_5_vl")
    monkeypatch.setattr("huggingface_hub.snapshot_download",
                        lambda repo, revision, allow_patterns: calls.append((repo, revision, allow_patterns)) or local)
    stage = processor.get_stage_by_name("TokenizeStage")
    kwargs = dict(stage.fn_constructor_kwargs, model="OpenGVLab/InternVL2_5-8B")
    udf = stage.fn(data_column="__data", expected_input_keys=["messages"], **kwargs)
    assert calls == [("OpenGVLab/InternVL2_5-8B", revision, calls[0][2])] and "*.py" in calls[0][2]
    assert udf.tokenizer is not None
    assert vllm_engine.pinned_model_path(local, revision, True) == local  # local folders as they are
    # Ray ships the pinned UDF classes to its workers by reference (importable module names).
    from ray import cloudpickle

    for name in ("ChatTemplateStage", "TokenizeStage", "DetokenizeStage"):
        fn = processor.get_stage_by_name(name).fn
        assert cloudpickle.loads(cloudpickle.dumps(fn)) is fn


def test_structured_outputs_allow_no_free_whitespace():
    params = sampling_params(64, 0.0, {"type": "object"})
    assert params["structured_outputs"]["disable_any_whitespace"] is True
    assert json.loads(params["structured_outputs"]["json"]) == {"type": "object"}


def test_remote_code_needs_a_pinned_revision_unless_local(tmp_path):
    with pytest.raises(ConfigError, match="caption.revision"):
        load_config("gpu-paper", overrides=["caption.revision=null"])
    local = load_config("gpu-paper", overrides=["caption.revision=null", f"caption.model={tmp_path}"])
    assert local.caption.revision is None
    # The revision is part of the config digest (and of the run report's config and models).
    a = load_config("gpu-paper", overrides=["caption.revision=" + "a" * 40])
    b = load_config("gpu-paper", overrides=["caption.revision=" + "b" * 40])
    assert a.digest() != b.digest()
    from unsafe2safe_ray.preflight import model_manifest

    caption = next(m for m in model_manifest(a) if m["stage"] == "caption")
    assert caption == {"stage": "caption", "engine": "vllm", "model": "OpenGVLab/InternVL2_5-8B",
                       "revision": "a" * 40, "trust_remote_code": True, "fixed_source": False}


def _iou(a, b):
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _answer(boxes):
    return json.dumps({"privacy_flag": True, "categories": ["people"], "privacy_review": ["a face: identity"],
                       "private_caption": "a man", "public_caption": "a person",
                       "regions": [{"category": "people", "bbox": b} for b in boxes]})


def test_qwen2_5_vl_boxes_are_read_in_resized_pixels():
    """gpu-fast: a 1536x1024 image is sent at 768x512; Qwen2.5-VL's processor resizes it to
    756x504 (multiples of 28) and states boxes in those pixels, not on a 0-1000 grid."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    config = load_config("gpu-fast")
    stage = CaptionStage(config)
    truth = [1100, 700, 1300, 900]  # a face in the lower-right quadrant of the original
    frame_h, frame_w = smart_resize(512, 768, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
    answer = [round(v * frame_w / 1536) if i % 2 == 0 else round(v * frame_h / 1024) for i, v in enumerate(truth)]
    row = records.new_row("k", 0, "mem://k.jpg", None, 0)
    row.update(width=1536, height=1024)
    out = stage.answer(row, _answer([answer, [900, 600, 1000, 700]]), True)
    regions = out["regions"]
    assert _iou(regions[0]["bbox"], truth) > 0.95  # before: read on a 0-1000 grid, IoU 0
    assert len(regions) == 1 and stage.box_frame == "resized_pixels"
    # The second box lies outside the 756x504 frame: dropped and counted, not clamped to an edge.
    assert out["verification"]["vlm_boxes_dropped"] == 1
    # The prompt asks Qwen2.5-VL for its own frame.
    prompt = json.dumps(stage.request(dict(row, image=None))[0])
    assert "pixel coordinates" in prompt and "0-1000" not in prompt


def test_grid_models_keep_the_0_1000_frame():
    config = load_config("gpu-paper", overrides=["caption.regions=true"])
    stage = CaptionStage(config)
    assert stage.box_frame == "grid1000"
    row = records.new_row("k", 0, "mem://k.jpg", None, 0)
    row.update(width=1536, height=1024)
    out = stage.answer(row, _answer([[716, 684, 846, 879], [100, 100, 1200, 400]]), True)
    assert _iou(out["regions"][0]["bbox"], [1100, 700, 1300, 900]) > 0.95
    assert out["verification"]["vlm_boxes_dropped"] == 1
    # Declared in the profile, the frame wins over the model id.
    forced = CaptionStage(load_config("gpu-fast", overrides=["caption.box_frame=grid1000"]))
    assert forced.box_frame == "grid1000"


def test_transformers_engine_loads_hf_native_internvl(tiny_models):
    from unsafe2safe_ray.engines import GenerationRequest, load_engine

    engine = load_engine("transformers", "tiny://internvl", device="cpu", dtype="float32")
    assert type(engine.model).__name__ == "InternVLForConditionalGeneration"
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]}
    result = engine.generate([GenerationRequest(
        messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ok"}]}],
        image=np.zeros((40, 60, 3), np.uint8), json_schema=schema, max_new_tokens=24)])[0]
    assert result.finished and json.loads(result.text)["a"] in (True, False)


def test_transformers_engine_names_the_hf_variant_for_internvl_chat(tmp_path):
    from unsafe2safe_ray.engines.transformers_engine import TransformersEngine

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}}))
    for trust in (False, True):
        with pytest.raises(ConfigError, match="InternVL3_5-8B-HF"):
            TransformersEngine(str(tmp_path), device="cpu", trust_remote_code=trust)
