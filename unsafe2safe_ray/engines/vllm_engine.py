"""vLLM through ``ray.data.llm``: a processor that a stage plugs into the Dataset.

``ray.data.llm`` processors transform whole Datasets (preprocess -> multimodal preparation ->
chat template -> tokenize -> vLLM engine actors -> detokenize -> postprocess), so the vLLM path
is not a ``TextEngine``. A stage describes its calls with a ``VLLMCall`` (how a pipeline row
becomes a request, how an answer goes back into the row) and ``apply_vllm`` does the rest:

1. ``VLLMPreprocess`` turns each pipeline row into OpenAI-style ``messages`` (the image as a
   resized JPEG data URL) and ``sampling_params`` with ``structured_outputs`` (the JSON schema).
   Rows the stage skips (failed, unflagged) get a one-token placeholder request, so the stream
   is never split and re-joined.
2. The processor runs with ``should_continue_on_error=True`` and a fixed pool (``concurrency=(n,
   n)``), so one bad request is one failed row, not a failed shard.
3. ``VLLMPostprocess`` parses ``generated_text`` into the row and returns only the pipeline
   columns (no messages, no second copy of the image).
4. ``normalize_vllm_rows`` turns the processor's error rows (which bypass postprocess) into
   failed pipeline rows, and gives every block the pipeline schema again.

Nothing here imports vllm: building the processor works without it (the engine actors import it
when they start), so the wiring is testable on a CPU machine.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.engines.base import fit_image

# Columns the preprocess adds for the processor; never part of the pipeline row.
SKIP_COLUMN = "u2s_skip"
ERROR_COLUMN = "__inference_error__"


def image_data_url(pixels: np.ndarray, max_side: int | None, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of ``pixels``, downscaled to ``max_side``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(fit_image(pixels, max_side)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(messages: list[dict], image_url: str | None) -> list[dict]:
    """Our messages in the shape vLLM's chat parser takes.

    The ``{"type": "image"}`` placeholder becomes an ``image_url`` part; system messages get
    plain string content, which every chat template accepts. Text-only requests get string
    content throughout (text LLM templates such as Qwen3's expect strings).
    """
    out = []
    for message in messages:
        parts = message["content"]
        if isinstance(parts, str):
            out.append({"role": message["role"], "content": parts})
            continue
        has_image = any(p.get("type") == "image" for p in parts)
        if message["role"] == "system" or not has_image or image_url is None:
            text = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
            out.append({"role": message["role"], "content": text})
            continue
        content = []
        for part in parts:
            if part.get("type") == "image":
                content.append({"type": "image_url", "image_url": {"url": image_url}})
            else:
                content.append({"type": "text", "text": part.get("text", "")})
        out.append({"role": message["role"], "content": content})
    return out


def sampling_params(max_tokens: int, temperature: float, json_schema: dict | None) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields as a dict; the schema goes to ``structured_outputs``."""
    params: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": float(temperature)}
    if json_schema is not None:
        # As a JSON string: a dict would travel as an Arrow struct, whose type unification
        # across rows can add null keys to the schema.
        # disable_any_whitespace: compact JSON only, so a greedy answer cannot spend max_tokens on
        # whitespace (vLLM's StructuredOutputsParams; the transformers engine does the same).
        params["structured_outputs"] = {"json": json.dumps(json_schema), "disable_any_whitespace": True}
    return params


@dataclass
class VLLMCall:
    """What a stage asks of vLLM.

    ``request(row)`` returns ``(messages, image_or_None, json_schema)`` for a row to run, or
    ``None`` to pass the row through. ``answer(row, text, finished)`` writes the parsed answer
    (or a failure) into the row and returns it. Both must be picklable (bound methods of a
    stage are: the stage holds only config and no model on the driver).
    """

    stage_name: str
    model_source: str
    request: Callable[[dict], tuple[list[dict], np.ndarray | None, dict | None] | None]
    answer: Callable[[dict, str, bool], dict]
    max_tokens: int
    temperature: float
    max_image_side: int | None = None
    multimodal: bool = False
    # Flag a row whose request vLLM could not serve (the inspection stage: fail closed).
    flag_on_error: bool = False
    # Applied in postprocess to live rows that ``request`` skipped (None = pass unchanged).
    on_skip: Callable[[dict], dict] | None = None


class VLLMPreprocess:
    """Row -> ``messages`` + ``sampling_params`` (+ the skip marker)."""

    def __init__(self, call: VLLMCall) -> None:
        self.call = call

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        request = self.call.request(row) if records.is_live(row) else None
        if request is None:
            # A one-token text request keeps the row in the stream at negligible cost.
            return {
                "messages": [{"role": "user", "content": "ok"}],
                "sampling_params": sampling_params(1, 0.0, None),
                SKIP_COLUMN: True,
            }
        messages, image, schema = request
        url = image_data_url(image, self.call.max_image_side) if image is not None else None
        return {
            "messages": openai_messages(messages, url),
            "sampling_params": sampling_params(self.call.max_tokens, self.call.temperature, schema),
            SKIP_COLUMN: False,
        }


class VLLMPostprocess:
    """Processor output row -> pipeline row (only the pipeline columns)."""

    def __init__(self, call: VLLMCall) -> None:
        self.call = call

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {name: row.get(name) for name in records.PIPELINE_COLUMNS}
        if row.get(SKIP_COLUMN):
            if self.call.on_skip is not None and records.is_live(out):
                out = self.call.on_skip(out)
            return out
        text = row.get("generated_text") or ""
        # vLLM reports no finish reason here; an answer that used every allowed token was cut.
        finished = int(row.get("num_generated_tokens") or 0) < self.call.max_tokens
        return self.call.answer(out, text, finished)


def normalize_vllm_rows(batch: Any, stage_name: str, flag_on_error: bool = False) -> Any:
    """Processor output (pyarrow batch) -> pipeline table; inference errors -> failed rows."""
    import pyarrow as pa

    names = [n for n in (*records.PIPELINE_COLUMNS, ERROR_COLUMN) if n in batch.column_names]
    rows = batch.select(names).to_pylist()
    out = []
    for row in rows:
        error = row.pop(ERROR_COLUMN, "") or ""
        row = {name: row.get(name) for name in records.PIPELINE_COLUMNS}
        if error and records.is_live(row):
            if flag_on_error:
                row["privacy_flag"] = True
            records.fail(row, f"{stage_name}: inference error: {error}")
        out.append(row)
    return pa.Table.from_pylist(out, schema=records.PIPELINE_SCHEMA)


# Engine arguments that vLLM's ModelConfig also takes: Ray's PrepareMultimodalStage builds its own
# ModelConfig from ``model_config_kwargs`` only, so these must be passed there too.
MODEL_CONFIG_KEYS = ("trust_remote_code", "revision", "code_revision", "tokenizer_revision", "max_model_len",
                     "mm_processor_kwargs", "limit_mm_per_prompt", "hf_overrides", "tokenizer", "tokenizer_mode")
# The ray.data.llm CPU stages that load the tokenizer / processor (and with it remote code).
TOKENIZER_STAGES = ("ChatTemplateStage", "TokenizeStage", "DetokenizeStage")


def effective_engine_kwargs(section: Any, multimodal: bool) -> dict[str, Any]:
    """The vLLM engine arguments of a stage section: its ``engine_kwargs``, the image limit, and
    the pinned revision (model, code and tokenizer) when ``section.revision`` is set."""
    engine_kwargs = dict(section.engine_kwargs)
    if multimodal:
        engine_kwargs.setdefault("limit_mm_per_prompt", {"image": 1})
    revision = getattr(section, "revision", None)
    if revision:
        for key in ("revision", "code_revision", "tokenizer_revision"):
            engine_kwargs.setdefault(key, revision)
    return engine_kwargs


def multimodal_model_config_kwargs(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What PrepareMultimodalStage's ModelConfig gets (Ray adds ``model`` itself)."""
    return {k: engine_kwargs[k] for k in MODEL_CONFIG_KEYS if k in engine_kwargs}


def processor_config(section: Any, model_source: str, multimodal: bool):
    """The ``vLLMEngineProcessorConfig`` for a stage section (caption or instruct)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    engine_kwargs = effective_engine_kwargs(section, multimodal)
    pool = section.pool_size or 1
    prepare: Any = False
    if multimodal:
        prepare = {"enabled": True, "model_config_kwargs": multimodal_model_config_kwargs(engine_kwargs)}
    kwargs: dict[str, Any] = dict(
        model_source=model_source,
        engine_kwargs=engine_kwargs,
        batch_size=section.batch_size,
        # A fixed pool: the GPUs are reserved up front, no autoscaling churn of 8B models.
        concurrency=(pool, pool),
        should_continue_on_error=True,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=True,
        prepare_multimodal_stage=prepare,
    )
    if section.accelerator_type:
        kwargs["accelerator_type"] = section.accelerator_type
    return vLLMEngineProcessorConfig(**kwargs)


def pinned_model_path(model: str, revision: str | None, trust_remote_code: bool) -> str:
    """A local snapshot of ``model`` at ``revision`` without weights (config, tokenizer, chat
    template and, with remote code, its Python files), or ``model`` itself when it is not a hub
    id or no revision is pinned. Runs in the CPU stages' actors."""
    from unsafe2safe_ray.config import is_fixed_model_source

    if not revision or is_fixed_model_source(model):
        return model
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", *(["*.py"] if trust_remote_code else [])]
    return snapshot_download(model, revision=revision, allow_patterns=patterns)


def _pinned(udf_class: type) -> type:
    """A subclass of a ray.data.llm tokenizer-stage UDF that loads ``model`` at a pinned revision
    (Ray's own stages take no revision, so they would load the hub's moving main branch)."""

    def __init__(self, data_column, expected_input_keys, model, revision=None, **kwargs):
        path = pinned_model_path(model, revision, bool(kwargs.get("trust_remote_code")))
        udf_class.__init__(self, data_column, expected_input_keys, model=path, **kwargs)

    name = f"Pinned{udf_class.__name__}"
    return type(name, (udf_class,), {"__init__": __init__, "__module__": __name__, "__qualname__": name})


def _pinned_udfs() -> dict[str, type]:
    try:
        from ray.llm._internal.batch.stages.chat_template_stage import ChatTemplateUDF
        from ray.llm._internal.batch.stages.tokenize_stage import DetokenizeUDF, TokenizeUDF
    except ImportError:  # ray without ray.data.llm: the vLLM path is unavailable anyway
        return {}
    return {c.__name__: _pinned(c) for c in (ChatTemplateUDF, TokenizeUDF, DetokenizeUDF)}


_PINNED_UDFS = _pinned_udfs()
# Module-level names, so Ray pickles the classes by reference.
globals().update({c.__name__: c for c in _PINNED_UDFS.values()})


def pin_tokenizer_stages(processor: Any, revision: str | None) -> Any:
    """Make the processor's chat-template, tokenize and detokenize stages load the pinned
    revision (the revision is passed on as a constructor argument, which `plan` shows)."""
    if not revision:
        return processor
    for name in TOKENIZER_STAGES:
        if name not in processor.list_stage_names():
            continue
        stage = processor.get_stage_by_name(name)
        stage.fn = _PINNED_UDFS.get(stage.fn.__name__, stage.fn)
        stage.fn_constructor_kwargs = {**stage.fn_constructor_kwargs, "revision": revision}
    return processor


class _driver_config_pinned:
    """While Ray builds the processor, its driver-side ``AutoConfig.from_pretrained(model,
    trust_remote_code=...)`` (telemetry only) loads the pinned revision, not the hub's main."""

    def __init__(self, model: str, revision: str | None) -> None:
        self.model, self.revision, self.original = model, revision, None

    def __enter__(self):
        if not self.revision:
            return self
        import transformers

        self.original = transformers.AutoConfig.__dict__["from_pretrained"]
        model, revision, original = self.model, self.revision, self.original.__func__

        def from_pretrained(cls, name, *args, **kwargs):
            if name == model:
                kwargs.setdefault("revision", revision)
                kwargs.setdefault("code_revision", revision)
            return original(cls, name, *args, **kwargs)

        transformers.AutoConfig.from_pretrained = classmethod(from_pretrained)
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            import transformers

            transformers.AutoConfig.from_pretrained = self.original
        return False


def build_vllm_processor(section: Any, call: VLLMCall):
    """A ``ray.data.llm`` processor that runs ``call`` with the section's engine settings."""
    from ray.data.llm import build_processor

    revision = getattr(section, "revision", None)
    config = processor_config(section, call.model_source, call.multimodal)
    with _driver_config_pinned(call.model_source, revision):
        processor = build_processor(config, preprocess=VLLMPreprocess(call), postprocess=VLLMPostprocess(call))
    return pin_tokenizer_stages(processor, revision)


def apply_vllm(ds: Any, section: Any, call: VLLMCall) -> Any:
    """Append the vLLM processor for ``call`` to ``ds``; the result follows PIPELINE_SCHEMA."""
    return run_vllm_processor(ds, build_vllm_processor(section, call), call)


def run_vllm_processor(ds: Any, processor: Any, call: VLLMCall) -> Any:
    """``processor(ds)`` followed by the normalization back to pipeline rows."""
    from unsafe2safe_ray.stages.base import Resources, map_batches

    return map_batches(
        processor(ds), normalize_vllm_rows, name=f"{call.stage_name}_rows",
        resources=Resources(num_cpus=0.25, batch_size=None),
        fn_kwargs={"stage_name": call.stage_name, "flag_on_error": call.flag_on_error},
    )
