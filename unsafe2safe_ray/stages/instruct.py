"""``instruct``: Stage 1c. A text-only LLM reads the public caption (and the class label) and
writes an identity-neutral edit instruction, optionally with the combined caption.

The LLM never sees the image, the private caption or the review. Rows not flagged skip it (they
are not edited), unless ``edit.edit_all`` asks for every row to be edited.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import prompts, records
from unsafe2safe_ray.prompts.parsers import ParseError, parse_instruction
from unsafe2safe_ray.stages.generation import GenerationStage


class InstructStage(GenerationStage):
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

    def skip(self, row: dict[str, Any]) -> dict[str, Any] | None:
        if not self.wants(row):
            return row  # unflagged: passes unchanged
        if not (row.get("public_caption") or "").strip():
            return self._no_caption(row)
        return None

    def vllm_options(self) -> dict[str, Any]:
        return {"multimodal": False, "on_skip": self._skipped}

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
