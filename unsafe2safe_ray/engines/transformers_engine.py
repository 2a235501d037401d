"""Transformers engine: batched ``generate`` with a grammar-constrained decoder (xgrammar).

Runs a VLM (``AutoProcessor`` + ``AutoModelForImageTextToText``) or a text LLM
(``AutoTokenizer`` + ``AutoModelForCausalLM``), chosen from the checkpoint's config. Each request
may carry a JSON schema; xgrammar compiles it once (cached) and masks the logits so that every
finished answer is valid JSON of that schema. An answer the token limit cut is returned with
``finished=False`` and the caller turns it into a failed row.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from unsafe2safe_ray.engines.base import GenerationRequest, GenerationResult, TextEngine, fit_image
from unsafe2safe_ray.models import hub_kwargs, resolve_model_source

log = logging.getLogger(__name__)


# model_type of checkpoints whose only loader is their repo's own code (AutoModel + model.chat),
# with the HF-native variant the transformers engine loads instead.
REMOTE_ONLY_MODEL_TYPES = {
    "internvl_chat": "the HF-native InternVL checkpoints (model_type internvl), e.g. OpenGVLab/InternVL3_5-8B-HF "
                     "or OpenGVLab/InternVL3-8B-hf",
}


def check_loadable(model: str, path: str, revision: str | None = None) -> None:
    """Refuse, with what to use instead, a checkpoint the transformers engine cannot load: its
    config is read as JSON (no remote code runs) and its model_type checked."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(path, **({"revision": revision} if revision else {}))
    except (OSError, ValueError):
        return  # from_pretrained reports a missing or broken checkpoint itself
    model_type = config.get("model_type", "")
    if model_type in REMOTE_ONLY_MODEL_TYPES:
        from unsafe2safe_ray.config import ConfigError

        raise ConfigError(
            f"{model} is a remote-code {model_type!r} checkpoint: it has no AutoModelForImageTextToText or "
            f"processor, so the transformers engine cannot load it; use {REMOTE_ONLY_MODEL_TYPES[model_type]} "
            "(the same weights family), or engine: vllm")


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


class TransformersEngine(TextEngine):
    """A local transformers model behind ``TextEngine`` (CPU or one GPU)."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        max_image_side: int | None = None,
        threads: int = 0,
        trust_remote_code: bool = False,
        seed: int = 0,
        revision: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if threads:
            # Ray grants an actor a few CPUs; torch would otherwise spawn one thread per core.
            torch.set_num_threads(threads)
        self.model_id = model
        self.device = device
        self.max_image_side = max_image_side
        self.seed = seed
        path = resolve_model_source(model, revision=revision)
        check_loadable(model, path, revision)
        pinned = hub_kwargs(model, revision)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **pinned)
        self.is_vision = hasattr(config, "vision_config")
        torch_dtype = _torch_dtype(dtype, device)
        if self.is_vision:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **pinned)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **pinned)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **pinned)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **pinned)
        # Decoder-only batches must be padded on the left so every answer starts at the end.
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.to(device).eval()
        self.stop_ids = self._stop_ids()
        self.vocab_size = config.get_text_config().vocab_size
        self._grammar_compiler = None
        self._grammars: dict[str, Any] = {}

    def _stop_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _grammar(self, schema: dict):
        """The compiled grammar of ``schema`` (compiled once per engine)."""
        import xgrammar as xgr

        # Not sorted: the grammar emits keys in the schema's order, and that order is the prompt's.
        key = json.dumps(schema)
        if key not in self._grammars:
            if self._grammar_compiler is None:
                info = xgr.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids)
                self._grammar_compiler = xgr.GrammarCompiler(info)
            # Compact JSON: with free whitespace a weak model can pad spaces until it runs out.
            self._grammars[key] = self._grammar_compiler.compile_json_schema(
                key, any_whitespace=False)
        return self._grammars[key]

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate all requests, batching those that share schema and decoding settings."""
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            key = (json.dumps(req.json_schema), req.max_new_tokens, req.temperature)
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        for indices in groups.values():
            for i, result in zip(indices, self._generate_batch([requests[i] for i in indices])):
                results[i] = result
        return results  # type: ignore[return-value]

    def _encode(self, requests: list[GenerationRequest]):
        from PIL import Image

        template_owner = self.processor if self.processor is not None else self.tokenizer
        texts = [
            template_owner.apply_chat_template(
                _for_template(r.messages, self.is_vision), tokenize=False, add_generation_prompt=True)
            for r in requests
        ]
        if not self.is_vision:
            return self.tokenizer(texts, return_tensors="pt", padding=True)
        images = [Image.fromarray(fit_image(r.image, self.max_image_side))
                  for r in requests if r.image is not None]
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)

    def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        first = requests[0]
        inputs = self._encode(requests).to(self.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=first.max_new_tokens,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if first.json_schema is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # One matcher per sequence; the processor holds decoding state, so build it per call.
            kwargs["logits_processor"] = [LogitsProcessor([self._grammar(first.json_schema)] * len(requests))]
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        seconds = time.perf_counter() - start
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        results = []
        for tokens in new_tokens:
            stop_at = next((j for j, t in enumerate(tokens) if t in self.stop_ids), None)
            kept = tokens if stop_at is None else tokens[:stop_at]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            results.append(GenerationResult(
                text=text,
                finished=stop_at is not None,
                meta={"new_tokens": len(kept), "batch_seconds": round(seconds, 4)},
            ))
        return results


def _for_template(messages: list[dict], is_vision: bool) -> list[dict]:
    """Messages as chat templates expect them: text-only models get plain string content."""
    if is_vision:
        return messages
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
        out.append({"role": message["role"], "content": content})
    return out
