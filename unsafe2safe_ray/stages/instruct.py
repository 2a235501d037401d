"""``instruct``: Stage 1c. A text-only LLM reads the public caption (and the class label) and
writes an identity-neutral edit instruction, optionally with the combined caption.

The LLM never sees the image, the private caption or the review. Rows not flagged skip it (they
are not edited), unless ``edit.edit_all`` asks for every row to be edited.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import prompts, records
from unsafe2safe_ray.engines.base import GenerationRequest
from unsafe2safe_ray.prompts.parsers import ParseError, parse_instruction
from unsafe2safe_ray.stages.base import Resources, Stage, apply_stage


class InstructStage(Stage):
    """LLM edit instructions from public captions (registry name ``instruct``)."""

    name = "instruct"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.section = config.instruct
        self.limits = prompts.TextLimits(
            instruction_chars=self.section.instruction_chars,
            caption_chars=self.section.caption_chars,
        )
        self.schema = prompts.instruction_schema(self.section.combined_caption, self.limits)
        self.edit_all = bool(getattr(getattr(config, "edit", None), "edit_all", False))
        self.engine = None

    def resources(self) -> Resources:
        """The section's resources; in-process engines always run in an actor pool."""
        res = super().resources()
        if res.pool_size is None:
            return Resources(res.num_cpus, res.num_gpus, res.batch_size, 1)
        return res

    def setup(self) -> None:
        """Load the LLM (once per actor)."""
        from unsafe2safe_ray.engines import load_engine

        kwargs: dict[str, Any] = {}
        if self.section.engine == "transformers":
            kwargs = dict(
                dtype=self.section.dtype,
                threads=self.section.threads,
                trust_remote_code=bool(self.section.engine_kwargs.get("trust_remote_code", False)),
                seed=self.config.seed,
            )
        self.engine = load_engine(self.section.engine, self.section.model, **kwargs)

    def wants(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` needs an instruction: live and flagged (or every row, with edit_all)."""
        return records.is_live(row) and (bool(row.get("privacy_flag")) or self.edit_all)

    def request(self, row: dict[str, Any]):
        """``(messages, None, schema)``: only the public caption and the label go in."""
        messages = prompts.instruction_messages(
            row.get("public_caption") or "", row.get("label"), self.section.combined_caption)
        return messages, None, self.schema

    def answer(self, row: dict[str, Any], text: str, finished: bool) -> dict[str, Any]:
        """Write a parsed instruction into ``row``, or fail it keeping the raw text."""
        try:
            found = parse_instruction(text, finished, self.section.combined_caption)
        except ParseError as e:
            row["raw_output"] = text
            return records.fail(row, f"instruct: {e}")
        row["edit_instruction"] = found.edit_instruction
        if found.combined_caption is not None:
            row["combined_caption"] = found.combined_caption
        return row

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Instructions for the flagged rows of a batch; other rows pass unchanged."""
        todo, requests = [], []
        for i, row in enumerate(rows):
            if not self.wants(row):
                continue
            if not (row.get("public_caption") or "").strip():
                rows[i] = self._no_caption(row)
                continue
            messages, _, schema = self.request(row)
            todo.append(i)
            requests.append(GenerationRequest(
                messages=messages, json_schema=schema,
                max_new_tokens=self.section.max_new_tokens, temperature=self.section.temperature))
        if requests:
            for i, result in zip(todo, self.engine.generate(requests)):
                rows[i] = self.answer(rows[i], result.text, result.finished)
        return rows

    def apply(self, ds: Any) -> Any:
        """vLLM: a ``ray.data.llm`` processor; other engines: the common actor-pool adapter."""
        if self.section.engine != "vllm":
            return apply_stage(ds, self)
        from unsafe2safe_ray.engines.vllm_engine import apply_vllm

        return apply_vllm(ds, self.section, self.vllm_call())

    def vllm_call(self):
        """The ``VLLMCall`` of this stage (its request and answer, and the decoding settings)."""
        from unsafe2safe_ray.engines.vllm_engine import VLLMCall
        from unsafe2safe_ray.testing.tiny import resolve_model_source

        return VLLMCall(
            stage_name=self.name,
            model_source=resolve_model_source(self.section.model),
            request=self._vllm_request,
            answer=self.answer,
            max_tokens=self.section.max_new_tokens,
            temperature=self.section.temperature,
            multimodal=False,
            on_skip=self._skipped,
        )

    def _vllm_request(self, row: dict[str, Any]):
        if not self.wants(row) or not (row.get("public_caption") or "").strip():
            return None
        return self.request(row)

    def _skipped(self, row: dict[str, Any]) -> dict[str, Any]:
        # Skipped because unflagged: unchanged. Skipped although wanted: no caption to work from.
        return self._no_caption(row) if self.wants(row) else row

    @staticmethod
    def _no_caption(row: dict[str, Any]) -> dict[str, Any]:
        return records.fail(row, "instruct: the flagged row has no public caption")
