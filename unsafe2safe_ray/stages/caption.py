"""``caption``: Stage 1a/1b. One VLM call per image returns the privacy flag, the categories, a
short privacy review, and the private/public caption pair (optionally boxes).

The answer is grammar-constrained to ``prompts.inspection_schema``. Anything that does not parse
(empty, malformed, cut by the token limit) fails the row, keeps the raw text in ``raw_output``
and sets the flag: an image is never passed as safe because its answer was unreadable.
"""

from __future__ import annotations

import logging
from typing import Any

from unsafe2safe_ray import prompts, records
from unsafe2safe_ray.engines.base import fitted_size
from unsafe2safe_ray.prompts.parsers import ParseError, box_frame, model_box_frame, parse_inspection
from unsafe2safe_ray.stages.generation import GenerationStage

log = logging.getLogger(__name__)


class CaptionStage(GenerationStage):
    """VLM privacy inspection and dual captions (registry name ``caption``)."""

    name = "caption"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.section = config.caption
        self.criteria = prompts.resolve_criteria(self.section.criteria)
        self.category_names = list(self.criteria)
        self.limits = prompts.TextLimits(
            caption_chars=self.section.caption_chars,
            review_item_chars=self.section.review_item_chars,
            max_review_items=self.section.max_review_items,
        )
        self.schema = prompts.inspection_schema(self.category_names, self.section.regions, self.limits)
        # The frame the model states boxes in (Qwen2.5-VL: pixels of its resized image).
        self.box_frame = (self.section.box_frame if self.section.box_frame != "auto"
                          else model_box_frame(self.section.model))
        self.prompt_version = prompts.prompt_version("inspect", "criteria")
        self.engine = None
        if prompts.max_answer_chars(self.schema) > self.section.max_new_tokens:
            # Not an error: real models answer far below the bound. Random weights may not.
            log.info("caption: max_new_tokens %d is below the schema's worst case %d; long "
                     "answers will fail as truncated", self.section.max_new_tokens,
                     prompts.max_answer_chars(self.schema))

    def engine_kwargs(self) -> dict[str, Any]:
        return {"max_image_side": self.section.max_image_side}

    # -- one row in, one request out; one answer in, one row out (shared by both engines) --

    def request(self, row: dict[str, Any]):
        """``(messages, pixels, schema)`` for a live row. A row without pixels cannot be
        inspected; ``answer`` fails it."""
        messages = prompts.inspection_messages(
            row.get("label"), self.criteria, self.section.regions, self.limits, box_frame=self.box_frame)
        return messages, records.get_image(row), self.schema

    def answer(self, row: dict[str, Any], text: str, finished: bool) -> dict[str, Any]:
        """Write a parsed answer into ``row``, or fail it keeping the raw text."""
        row["caption_source"] = self.section.model
        row["prompt_version"] = self.prompt_version
        width, height = int(row.get("width") or 0), int(row.get("height") or 0)
        try:
            found = parse_inspection(text, finished, self.category_names, width, height,
                                     frame=self.frame_for(width, height))
        except ParseError as e:
            row["raw_output"] = text
            row["privacy_flag"] = True
            return records.fail(row, f"caption: {e}")
        # A detector stage before this one is a safety net: its hit keeps the row flagged even
        # when the VLM calls the image safe, so one model's miss is not a leak.
        by_detector = bool(row.get("privacy_flag"))
        row["privacy_flag"] = found.privacy_flag or by_detector
        row["flagged_by"] = "+".join(name for name, hit in (("vlm", found.privacy_flag), ("detector", by_detector)) if hit)
        earlier = [c for c in row.get("categories") or [] if c not in found.categories]
        row["categories"] = list(found.categories) + earlier
        # Boxes from earlier stages (detectors) stay; the VLM's are added beside them.
        row["regions"] = list(row.get("regions") or []) + found.regions
        if found.regions_dropped:
            # Counted where the row's checks are recorded (the edit stage adds to this dict).
            log.info("caption: %d box(es) outside the %s frame dropped", found.regions_dropped, self.box_frame)
            records.update_verification(row, vlm_boxes_dropped=found.regions_dropped)
        row["privacy_review"] = [str(item) for item in found.privacy_review]
        row["private_caption"] = found.private_caption
        row["public_caption"] = found.public_caption
        row["raw_output"] = None
        return row

    def frame_for(self, width: int, height: int):
        """The box frame of an image of ``width`` x ``height`` as this stage sends it."""
        if self.box_frame == "grid1000" or not width or not height:
            return box_frame("grid1000", width, height)
        sent_w, sent_h = fitted_size(width, height, self.section.max_image_side)
        return box_frame(self.box_frame, sent_w, sent_h, *self._pixel_bounds())

    def _pixel_bounds(self) -> tuple[int | None, int | None]:
        """min/max pixels of the model's resize: mm_processor_kwargs, else the loaded processor's
        (transformers engine), else the model family's defaults (None)."""
        mm = self.section.engine_kwargs.get("mm_processor_kwargs") or {}
        size = getattr(getattr(getattr(self.engine, "processor", None), "image_processor", None), "size", None)
        low = mm.get("min_pixels") or getattr(size, "shortest_edge", None)
        high = mm.get("max_pixels") or getattr(size, "longest_edge", None)
        return low, high

    def skip(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return self._no_pixels(row) if row.get("image") is None else None

    def vllm_options(self) -> dict[str, Any]:
        return {"max_image_side": self.section.max_image_side, "multimodal": True,
                "flag_on_error": True, "on_skip": self._no_pixels}

    def _vllm_request(self, row: dict[str, Any]):
        return self.request(row) if row.get("image") is not None else None

    @staticmethod
    def _no_pixels(row: dict[str, Any]) -> dict[str, Any]:
        row["privacy_flag"] = True
        return records.fail(row, "caption: the row has no pixels")
