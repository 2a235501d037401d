"""``unsafe2safe plan``: build the whole job for a profile without GPUs and without running a
model, and say what a cluster will be asked for.

The job's stages are appended to a one-row Dataset exactly as ``job.build_dataset`` appends them
(Ray Data is lazy: nothing runs, no model loads, no actor starts). The logical operators Ray
would execute are then read back, so what is printed is what Ray gets: for every operator its
name, actors and resources per actor, batch size, and for the stages that load models the model,
its revision and whether remote code is trusted (for ``ray.data.llm`` stages: the engine
arguments and the multimodal preparation's ``model_config_kwargs``). Then the GPUs the job needs
and a cost estimate from the per-image costs measured on an H200 (``GPU_MEASURED``).

Nothing is downloaded: ``HF_HUB_OFFLINE`` is set for the process (Ray's processor builder reads
the model's config for telemetry; offline it skips that). A local Ray on 127.0.0.1 is started to
build the Dataset; ``--address`` is ignored.

Not the input planner: that is ``unsafe2safe_ray.plan`` (listing and shards).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from unsafe2safe_ray.config import JobConfig, is_fixed_model_source

# Per-image editor costs measured on one NVIDIA H200 (../shared/GPU-MEASURED.md, 2026-11-30:
# `benchmarks/edit_throughput.py --full --no-ray`, random full-size weights in bf16, torch 2.11 +
# CUDA 13, diffusers 0.42.1). (editor, settings, batch, seconds per edited image).
GPU_MEASURED = (
    {"editor": "instruct-pix2pix", "resolution": "512x512", "steps": 20, "batch": 16, "seconds": 0.20},
    {"editor": "flowedit", "resolution": "1024x1024 (area buckets)", "steps": 28, "n_max": 19, "batch": 4,
     "seconds": 1.93, "profile": "gpu-fast"},
    {"editor": "flowedit", "resolution": "480x640 (native)", "steps": 50, "n_max": 33, "batch": 2,
     "seconds": 1.05, "profile": "gpu-paper"},
    {"editor": "kontext", "resolution": "512x512", "steps": 28, "batch": 2, "seconds": 2.27},
    {"editor": "kontext", "resolution": "1024x1024", "steps": 28, "batch": 1, "seconds": 9.8},
)
GPU_MEASURED_HARDWARE = "1x NVIDIA H200, bf16, torch 2.11 + CUDA 13, diffusers 0.42.1 (GPU-MEASURED.md)"
# Stage 1 on vLLM has not been measured: FLOP estimates (README sizing table), labelled as such.
STAGE1_ESTIMATES = {"caption": (0.05, 0.1), "instruct": (0.01, 0.02)}
# The cpu profile's detect + edit + verify, measured on 2 cores here (README).
CPU_MEASURED_CORE_SECONDS = (0.6, 0.8)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Constructor arguments worth showing for the UDFs of ray.data.llm stages.
_SHOWN_KWARGS = ("model", "revision", "trust_remote_code", "model_config_kwargs", "engine_kwargs",
                 "chat_template_content_format", "batch_size", "max_concurrent_batches", "task_type",
                 "should_continue_on_error")


class PreflightError(ValueError):
    """Misconfigurations found by the preflight, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def model_manifest(config: JobConfig) -> list[dict[str, Any]]:
    """The models the job's stages load: stage, engine or editor, model id (and the local path
    it resolves to), pinned revision, whether remote code is trusted. Written to ``_runs/``."""
    out: list[dict[str, Any]] = []
    for name in config.stages:
        if name in ("caption", "instruct"):
            section = getattr(config, name)
            out.append({"stage": name, "engine": section.engine, "model": section.model,
                        "revision": section.revision,
                        "trust_remote_code": bool(section.engine_kwargs.get("trust_remote_code", False)),
                        "fixed_source": is_fixed_model_source(section.model)})
        elif name == "edit":
            editor = config.edit.editor
            model = {"instruct-pix2pix": config.edit.instruct_pix2pix_model, "flowedit": config.edit.flowedit_model,
                     "kontext": config.edit.kontext_model}.get(editor)
            out.append({"stage": name, "editor": editor, "model": model, "revision": None,
                        "trust_remote_code": False,
                        "fixed_source": model is None or is_fixed_model_source(model)})
        elif name == "detect":
            out.append({"stage": name, "model": "shipped in wheels (CenterFace, PP-OCR, dlib)", "revision": None,
                        "trust_remote_code": False, "fixed_source": True})
    return out


def _strategy(op: Any) -> tuple[str, int | None, int | None]:
    compute = getattr(op, "compute", None) or getattr(op, "_compute", None)
    if compute is not None and type(compute).__name__ == "ActorPoolStrategy":
        return "actors", compute.min_size, compute.max_size
    return "tasks", None, None


def _operators(ds: Any) -> list[Any]:
    """The logical operators of ``ds``, source first."""
    chain, op = [], ds._logical_plan.dag
    while op is not None:
        chain.append(op)
        deps = op.input_dependencies
        op = deps[0] if deps else None
    return chain[::-1]


def _describe(op: Any) -> dict[str, Any]:
    kind, low, high = _strategy(op)
    remote = dict(getattr(op, "ray_remote_args", None) or getattr(op, "_ray_remote_args", None) or {})
    fn = getattr(op, "fn", None) or getattr(op, "_fn", None)
    ctor = dict(getattr(op, "fn_constructor_kwargs", None) or getattr(op, "_fn_constructor_kwargs", None) or {})
    info: dict[str, Any] = {
        "operator": op.name,
        "kind": kind,
        "actors": None if kind == "tasks" else [low, high],
        "num_cpus": remote.get("num_cpus"),
        "num_gpus": remote.get("num_gpus", 0) or 0,
        "batch_size": getattr(op, "batch_size", None) or getattr(op, "_batch_size", None),
    }
    for key in ("accelerator_type", "max_concurrency", "memory"):
        if remote.get(key) is not None:
            info[key] = remote[key]
    udf = getattr(fn, "__name__", "")
    if udf:
        info["udf"] = udf
    shown = {k: ctor[k] for k in _SHOWN_KWARGS if k in ctor}
    if shown:
        info["loads"] = shown
        model = _loads_model(info)
        if model is not None:
            info["model"] = model
    if "vLLMEngine" in udf:
        engine = ctor.get("engine_kwargs") or {}
        # Ray reserves the engine's GPUs through a placement group when it spans several.
        info["gpus_per_actor"] = max(float(info["num_gpus"]),
                                     int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1)))
    else:
        info["gpus_per_actor"] = float(info["num_gpus"])
    return info


def _loads_model(info: dict[str, Any]) -> dict[str, Any] | None:
    """The model an operator loads, its revision and whether it trusts remote code, from the
    constructor arguments Ray will pass (top level, ``engine_kwargs`` or ``model_config_kwargs``)."""
    loads = info.get("loads") or {}
    scopes = [loads, loads.get("engine_kwargs") or {}, loads.get("model_config_kwargs") or {}]
    model = next((scope["model"] for scope in scopes if scope.get("model")), None)
    if model is None:
        return None
    return {"model": model,
            "revision": next((scope["revision"] for scope in scopes if scope.get("revision")), None),
            "trust_remote_code": any(bool(scope.get("trust_remote_code")) for scope in scopes)}


def _check_operator(stage: str, info: dict[str, Any], section: Any, problems: list[str], warnings: list[str]) -> None:
    """What Ray will pass must match the config: remote code where the config trusts it, and
    a pinned revision wherever remote code runs."""
    loads = info.get("model")
    if loads is None or section is None:
        return
    wants_remote = bool(section.engine_kwargs.get("trust_remote_code", False))
    fixed = is_fixed_model_source(section.model)
    where = f"{stage}: {info.get('udf') or info['operator']}"
    if wants_remote and not loads["trust_remote_code"]:
        problems.append(f"{where} does not get trust_remote_code although {stage}.engine_kwargs sets it: "
                        "the stage would fail to load the model")
    if loads["trust_remote_code"] and not fixed and not loads["revision"]:
        problems.append(f"{where} runs remote code of {section.model} without a pinned revision: set {stage}.revision")
    if loads["trust_remote_code"] and loads["revision"] and not fixed and not _COMMIT.match(str(loads["revision"])):
        note = (f"{stage}.revision {loads['revision']!r} is a branch or tag, not a commit hash: the remote code "
                "it names can still change; pin a 40-character commit")
        if note not in warnings:
            warnings.append(note)


# Hub ids of InternVL repos that ship only remote code (model_type internvl_chat); the HF-native
# ones end in -hf / -HF.
_INTERNVL_CHAT_ID = re.compile(r"^OpenGVLab/(Mini-)?InternVL[\w.-]*?-\d+B(-MPO|-Instruct|-Pretrained)?$", re.IGNORECASE)


def _transformers_loadable(config: JobConfig, name: str) -> str | None:
    """A line when a transformers-engine stage names a checkpoint that engine cannot load
    (remote-code ``internvl_chat``): from a local folder's config.json, or a known hub id."""
    section = getattr(config, name)
    if name not in config.stages or section.engine != "transformers":
        return None
    from unsafe2safe_ray.config import ConfigError
    from unsafe2safe_ray.engines.transformers_engine import REMOTE_ONLY_MODEL_TYPES, check_loadable

    model = section.model
    if model.startswith("tiny://") or "://" in model:
        return None
    if os.path.isdir(os.path.expanduser(model)):
        try:
            check_loadable(model, os.path.expanduser(model), section.revision)
        except ConfigError as e:
            return f"{name}: {e}"
        return None
    if _INTERNVL_CHAT_ID.match(model) and not model.lower().endswith("-hf"):
        return (f"{name}: {model} is a remote-code 'internvl_chat' checkpoint that the transformers engine cannot "
                f"load; use {REMOTE_ONLY_MODEL_TYPES['internvl_chat']}, or engine: vllm")
    return None


def _edit_cost(config: JobConfig) -> dict[str, Any] | None:
    edit = config.edit
    if "edit" not in config.stages or edit.editor not in ("instruct-pix2pix", "flowedit", "kontext"):
        return None
    steps = edit.steps
    candidates = [m for m in GPU_MEASURED if m["editor"] == edit.editor]
    if edit.editor == "flowedit":
        wanted = "gpu-fast" if edit.resolution == "area" else "gpu-paper"
        candidates = [m for m in candidates if m.get("profile") == wanted] or candidates
    if edit.editor == "kontext":
        big = edit.resolution == "area" and edit.bucket_area >= 1024 * 1024
        candidates = [m for m in candidates if ("1024" in m["resolution"]) == big] or candidates
    measured = candidates[0]
    seconds, basis = measured["seconds"], "measured"
    window = edit.flowedit_n_max if edit.editor == "flowedit" else steps
    measured_window = measured.get("n_max", measured["steps"])
    if window and window != measured_window:
        # Denoising cost is linear in the steps that run (FlowEdit: the n_max edit window).
        seconds = round(seconds * window / measured_window, 3)
        basis = f"estimate: measured {measured['seconds']} s at {measured_window} steps, scaled to {window}"
    if edit.scope == "crops":
        # Crops were never run on a GPU: the whole-image figure is an upper bound.
        basis = (f"upper bound: the whole-image figure ({basis}); edit.scope=crops edits only windows around "
                 "the regions and has not been measured on a GPU")
    return {"editor": edit.editor, "seconds_per_edited_image": seconds, "basis": basis,
            "measured_setting": {k: v for k, v in measured.items() if k != "seconds"},
            "hardware": GPU_MEASURED_HARDWARE}


def cost_estimate(config: JobConfig, flag_rate: float) -> dict[str, Any]:
    """GPU-seconds per input image and GPU-hours per million input images, by stage."""
    stages: dict[str, Any] = {}
    for name in ("caption", "instruct"):
        section = getattr(config, name)
        if name in config.stages and section.engine == "vllm":
            low, high = STAGE1_ESTIMATES[name]
            share = 1.0 if name == "caption" else flag_rate
            stages[name] = {"gpu_seconds_per_image": [round(low * share, 4), round(high * share, 4)],
                            "basis": "estimate (FLOP count, README sizing table); not measured on a GPU"}
    edit = _edit_cost(config)
    if edit:
        share = 1.0 if config.edit.edit_all else flag_rate
        stages["edit"] = dict(edit, gpu_seconds_per_image=round(edit["seconds_per_edited_image"] * share, 4),
                              share_edited=share)
    if "detect" in config.stages or (config.edit.editor == "classic" and "edit" in config.stages):
        stages["cpu"] = {"core_seconds_per_image": list(CPU_MEASURED_CORE_SECONDS),
                         "basis": "measured: cpu profile (detect + classic edit + verify) on 2 cores"}
    total_low = sum((v["gpu_seconds_per_image"][0] if isinstance(v.get("gpu_seconds_per_image"), list)
                     else v.get("gpu_seconds_per_image", 0.0)) for v in stages.values())
    total_high = sum((v["gpu_seconds_per_image"][1] if isinstance(v.get("gpu_seconds_per_image"), list)
                      else v.get("gpu_seconds_per_image", 0.0)) for v in stages.values())
    return {"flag_rate": flag_rate, "stages": stages,
            "gpu_hours_per_million_images": [round(total_low * 1e6 / 3600, 1), round(total_high * 1e6 / 3600, 1)]}


def _quiet_ray_llm() -> None:
    """ray.data.llm logs model downloads (none here) and a telemetry config miss (offline by
    design) while the processors are built; the plan's own lines say what matters."""
    import importlib
    import logging

    for name in ("ray.llm._internal.common.utils.download_utils", "ray.llm._internal.batch.processor.vllm_engine_proc"):
        try:
            importlib.import_module(name)  # its logger is set up (at INFO) on import
        except ImportError:
            continue
        logging.getLogger(f"ray.llm.{name}").setLevel(logging.ERROR)  # ray.llm's get_logger prefixes
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray._private.worker").setLevel(logging.WARNING)  # "ray.init() again"


def _start_local_ray() -> None:
    import logging

    import ray

    from unsafe2safe_ray.job import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


def build_plan(config: JobConfig, stages: str = "all", flag_rate: float = 0.6) -> dict[str, Any]:
    """The preflight report of ``config`` (see the module docstring). Raises ``PreflightError``
    with one line per misconfiguration."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from unsafe2safe_ray.job import apply_step, build_stages, stage_steps
    from unsafe2safe_ray.stages.decode import DecodeStage
    from unsafe2safe_ray.stages.write import WriteStage
    from unsafe2safe_ray.storage.layout import OutputLayout

    problems: list[str] = []
    warnings: list[str] = []
    for name in ("caption", "instruct"):
        problem = _transformers_loadable(config, name)
        if problem:
            problems.append(problem)
    if problems:
        raise PreflightError(problems)
    _quiet_ray_llm()
    try:
        stage_list = build_stages(config, stages, earlier_uri="memory://preflight-earlier")
        steps = stage_steps(config, stage_list)
    except Exception as e:  # noqa: BLE001 - reported as a misconfiguration
        raise PreflightError([f"stages: {e}"]) from None
    _start_local_ray()
    import ray.data

    ds = ray.data.from_items([{"shard": 0, "offset": 0, "count": 1}])
    seen = len(_operators(ds))
    report_stages: list[dict[str, Any]] = []
    all_steps = [[DecodeStage(config)], *steps,
                 [WriteStage(config, OutputLayout("memory://preflight"), "preflight", inspect_only=stages == "inspect")]]
    for step in all_steps:
        name = "+".join(stage.name for stage in step)
        try:
            ds = apply_step(ds, step)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: cannot be built: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        ops = _operators(ds)
        operators = [_describe(op) for op in ops[seen:]]
        seen = len(ops)
        section = getattr(config, name, None) if name in ("caption", "instruct") else None
        entry: dict[str, Any] = {"stage": name, "operators": operators}
        if section is not None:
            entry["engine"] = section.engine
            entry["model"] = section.model
            entry["revision"] = section.revision
            entry["trust_remote_code"] = bool(section.engine_kwargs.get("trust_remote_code", False))
            for info in operators:
                _check_operator(name, info, section, problems, warnings)
        report_stages.append(entry)
    if problems:
        raise PreflightError(problems)
    gpus = sum(float(info["gpus_per_actor"]) * (info["actors"][1] if info["actors"] else 1)
               for entry in report_stages for info in entry["operators"] if info["gpus_per_actor"])
    reserved_cpus = sum(float(1.0 if info["num_cpus"] is None else info["num_cpus"]) * info["actors"][1]
                        for entry in report_stages for info in entry["operators"] if info["actors"])
    return {
        "profile": config.profile,
        "stages_selected": stages,
        "config_digest": config.digest(),
        "models": model_manifest(config),
        "stages": report_stages,
        "resources": {"gpus": int(math.ceil(gpus)), "cpus_reserved_by_actor_pools": reserved_cpus},
        "cost": cost_estimate(config, flag_rate),
        "warnings": warnings,
    }


def format_plan(plan: dict[str, Any]) -> str:
    """The report as text, one operator per line."""
    lines = [f"profile {plan['profile']} (stages {plan['stages_selected']}), config digest {plan['config_digest']}"]
    for entry in plan["stages"]:
        head = f"stage {entry['stage']}"
        if "model" in entry:
            head += (f": {entry['engine']} {entry['model']} revision={entry['revision'] or 'unpinned'} "
                     f"trust_remote_code={entry['trust_remote_code']}")
        lines.append(head)
        for info in entry["operators"]:
            pool = f"actors {info['actors'][0]}-{info['actors'][1]}" if info["actors"] else "tasks"
            cpus = "1 (Ray's default)" if info["num_cpus"] is None else f"{info['num_cpus']:g}"
            text = (f"  {info['operator']}: {pool}, per {'actor' if info['actors'] else 'task'} num_cpus={cpus} "
                    f"gpus={info['gpus_per_actor']:g}, batch_size={info['batch_size']}")
            if info.get("accelerator_type"):
                text += f", accelerator={info['accelerator_type']}"
            lines.append(text)
            loads = info.get("loads") or {}
            model = info.get("model")
            if model:
                lines.append(f"    loads {model['model']} revision={model['revision'] or 'unpinned'} "
                             f"trust_remote_code={model['trust_remote_code']}")
            if "model_config_kwargs" in loads:
                lines.append(f"    model_config_kwargs {loads['model_config_kwargs']}")
            if "engine_kwargs" in loads:
                lines.append(f"    engine_kwargs {loads['engine_kwargs']}")
    res, cost = plan["resources"], plan["cost"]
    lines.append(f"GPUs needed: {res['gpus']}; CPUs reserved by actor pools: {res['cpus_reserved_by_actor_pools']:g}")
    for name, c in cost["stages"].items():
        if "gpu_seconds_per_image" in c:
            basis = c["basis"] + (f"; {c['hardware']}" if c.get("hardware") else "")
            lines.append(f"cost {name}: {c['gpu_seconds_per_image']} GPU-s per input image ({basis})")
        else:
            lines.append(f"cost {name}: {c['core_seconds_per_image']} core-s per image ({c['basis']})")
    low, high = cost["gpu_hours_per_million_images"]
    lines.append(f"GPU-hours per million input images at flag rate {cost['flag_rate']}: {low}-{high}")
    lines.extend(f"warning: {w}" for w in plan["warnings"])
    return "\n".join(lines)
