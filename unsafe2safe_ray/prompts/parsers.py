"""Turn model text into row fields, or raise ``ParseError``.

A parse error is never silent: the stage turns it into a failed row that keeps the raw text in
``raw_output``. In particular an empty, malformed or cut-off inspection answer can never produce
an unflagged image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from unsafe2safe_ray.prompts import CAPTION_WORDS, INSTRUCTION_WORDS, REGION_GRID


class ParseError(ValueError):
    """The answer cannot be used; the message says why (short, no model text in it)."""


@dataclass
class Inspection:
    """The fields of one inspection answer."""

    privacy_flag: bool
    categories: list[str]
    privacy_review: list[str]
    private_caption: str
    public_caption: str
    regions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Instruction:
    """The fields of one instruction answer."""

    edit_instruction: str
    combined_caption: str | None = None


def trim_words(text: str, max_words: int) -> str:
    """``text`` on one line, cut to at most ``max_words`` words."""
    words = text.split()
    return " ".join(words[:max_words])


def _load_object(text: str | None, finished: bool) -> dict[str, Any]:
    """The JSON object in ``text``. Tolerates a code fence or prose around it (models without
    a grammar add them), nothing else."""
    if text is None or not text.strip():
        raise ParseError("empty answer" + ("" if finished else " (token limit reached)"))
    start = text.find("{")
    if start < 0:
        raise ParseError("no JSON object in the answer")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        if not finished:
            raise ParseError("truncated answer: the token limit cut the JSON") from None
        raise ParseError(f"malformed JSON: {e.msg} at char {e.pos}") from None
    if not isinstance(value, dict):
        raise ParseError("the answer is not a JSON object")
    return value


def _required_text(obj: dict[str, Any], key: str, max_words: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ParseError(f"{key} is missing or empty")
    return trim_words(value, max_words)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ParseError("privacy_flag is missing or not a boolean")


def _category_name(value: Any) -> str:
    return "_".join(str(value).strip().lower().replace("-", " ").split())


def _regions(value: Any, known: set[str], width: int, height: int) -> list[dict[str, Any]]:
    """Boxes on the 0..REGION_GRID grid -> pixel boxes of the row's image; bad boxes dropped."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if not isinstance(item, dict):
            continue
        category = _category_name(item.get("category", ""))
        bbox = item.get("bbox")
        if category not in known or not isinstance(bbox, list) or len(bbox) != 4:
            continue
        try:
            x0, y0, x1, y1 = (min(max(float(v), 0.0), REGION_GRID) / REGION_GRID for v in bbox)
        except (TypeError, ValueError):
            continue
        if x1 <= x0 or y1 <= y0:
            continue
        out.append({
            "category": category,
            "bbox": [round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)],
            # The VLM states a box, it gives no confidence; 1.0 marks it as asserted.
            "score": 1.0,
            "source": "vlm",
        })
    return out


def parse_inspection(
    text: str | None,
    finished: bool,
    category_names: list[str],
    width: int = REGION_GRID,
    height: int = REGION_GRID,
) -> Inspection:
    """Parse an inspection answer. Raises ``ParseError`` for empty, malformed or cut answers.

    High recall: any named category turns the flag on, even if the model answered false.
    """
    obj = _load_object(text, finished)
    flag = _flag(obj.get("privacy_flag"))
    raw_categories = obj.get("categories", [])
    if not isinstance(raw_categories, list):
        raise ParseError("categories is not a list")
    known = set(category_names)
    categories = []
    for value in raw_categories:
        name = _category_name(value)
        if name in known and name not in categories:
            categories.append(name)
    review = obj.get("privacy_review", [])
    if isinstance(review, str):
        review = [review]
    if not isinstance(review, list):
        raise ParseError("privacy_review is not a list")
    review = [trim_words(str(item), 40) for item in review if str(item).strip()][:5]
    return Inspection(
        privacy_flag=flag or bool(categories),
        categories=categories,
        privacy_review=review,
        private_caption=_required_text(obj, "private_caption", CAPTION_WORDS),
        public_caption=_required_text(obj, "public_caption", CAPTION_WORDS),
        regions=_regions(obj.get("regions"), known, width, height),
    )


def parse_instruction(text: str | None, finished: bool, combined_caption: bool = False) -> Instruction:
    """Parse an instruction answer. Raises ``ParseError`` for empty, malformed or cut answers."""
    obj = _load_object(text, finished)
    return Instruction(
        edit_instruction=_required_text(obj, "edit_instruction", INSTRUCTION_WORDS),
        combined_caption=(
            _required_text(obj, "combined_caption", CAPTION_WORDS) if combined_caption else None
        ),
    )
