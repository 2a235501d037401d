"""``unsafe2safe plan``: the preflight builds the whole job for every shipped profile on this
CPU machine (no GPU, no model loaded, nothing downloaded) and shows what Ray will be given."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from unsafe2safe_ray.cli import app
from unsafe2safe_ray.config import available_profiles, load_config
from unsafe2safe_ray.preflight import PreflightError, build_plan, format_plan

pytestmark = pytest.mark.usefixtures("ray_local")
runner = CliRunner()


@pytest.mark.parametrize("profile", available_profiles())
def test_plan_builds_every_shipped_profile(profile):
    config = load_config(profile)
    plan = build_plan(config)
    # One entry per Ray step: a ray.colocate group is one step named a+b.
    assert [s["stage"] for s in plan["stages"]] == ["decode", *config.step_names(), "write"]
    for entry in plan["stages"]:
        assert entry["operators"], entry["stage"]
        for info in entry["operators"]:
            assert info["operator"] and info["kind"] in ("actors", "tasks")
    assert plan["resources"]["gpus"] == (3 if profile.startswith("gpu-") else 0)
    assert plan["config_digest"] == config.digest()
    text = format_plan(plan)
    assert f"profile {profile}" in text and "GPUs needed" in text


def _invoke(*args):
    result = runner.invoke(app, ["plan", *args])
    return result.exit_code, result.stdout, result.stderr


def _internvl_operators(plan):
    return [info for entry in plan["stages"] for info in entry["operators"]
            if "InternVL" in str((info.get("model") or {}).get("model"))]


def test_gpu_paper_plan_shows_remote_code_and_a_revision_on_every_internvl_stage():
    code, out, err = _invoke("--profile", "gpu-paper", "--json")
    assert code == 0, err
    plan = json.loads(out)
    internvl = _internvl_operators(plan)
    assert {i["udf"] for i in internvl} == {"PrepareMultimodalUDF", "PinnedChatTemplateUDF", "PinnedTokenizeUDF",
                                            "vLLMEngineStageUDF", "PinnedDetokenizeUDF"}
    for info in internvl:
        assert info["model"]["trust_remote_code"] is True and info["model"]["revision"], info["udf"]
    prepare = next(i for i in internvl if i["udf"] == "PrepareMultimodalUDF")["loads"]["model_config_kwargs"]
    assert prepare["trust_remote_code"] is True and prepare["mm_processor_kwargs"] == {"max_dynamic_patch": 1}
    engine = next(i for i in internvl if i["udf"] == "vLLMEngineStageUDF")
    assert engine["gpus_per_actor"] == 1 and engine["actors"] == [1, 1]
    caption = next(m for m in plan["models"] if m["stage"] == "caption")
    assert caption["model"] == "OpenGVLab/InternVL2_5-8B" and caption["revision"]
    # Costs: the editor's from the H200 measurements, Stage 1 labelled as an estimate.
    assert plan["cost"]["stages"]["edit"]["basis"] == "measured"
    assert plan["cost"]["stages"]["edit"]["seconds_per_edited_image"] == 1.05
    assert "estimate" in plan["cost"]["stages"]["caption"]["basis"]


def test_gpu_fast_plan_exits_0():
    code, out, err = _invoke("--profile", "gpu-fast", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert not _internvl_operators(plan)  # gpu-fast loads no InternVL, hence no remote code
    caption = next(s for s in plan["stages"] if s["stage"] == "caption")
    assert caption["trust_remote_code"] is False and plan["resources"]["gpus"] == 3


def test_plan_without_the_revision_exits_2_with_one_line():
    code, out, err = _invoke("--profile", "gpu-paper", "--set", "caption.revision=null")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "caption.revision" in lines[0] and lines[0].startswith("error:")


def test_plan_reports_what_ray_would_not_get(monkeypatch):
    """The preflight checks the operators Ray is given, not the config: wiring that drops
    remote code from the multimodal preparation (the bug this issue fixed) is one line."""
    from unsafe2safe_ray.engines import vllm_engine

    monkeypatch.setattr(vllm_engine, "multimodal_model_config_kwargs", lambda engine_kwargs: {})
    with pytest.raises(PreflightError) as err:
        build_plan(load_config("gpu-paper"))
    assert len(err.value.problems) == 1
    assert "PrepareMultimodalUDF does not get trust_remote_code" in err.value.problems[0]


def test_plan_refuses_internvl_chat_on_the_transformers_engine():
    code, out, err = _invoke("--profile", "gpu-paper", "--set", "caption.engine=transformers")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "InternVL3_5-8B-HF" in lines[0] and lines[0].startswith("error: caption:")
    assert _invoke("--profile", "gpu-paper", "--set", "caption.engine=transformers",
                   "--set", "caption.model=OpenGVLab/InternVL3_5-8B-HF", "--set", "caption.revision=null",
                   "--set", "caption.engine_kwargs.trust_remote_code=false")[0] == 0
