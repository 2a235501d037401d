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


# Qwen2.5-VL's image processor defaults (preprocessor_config.json of the 7B model): the frame of
# its boxes is the image after smart_resize to multiples of 28 within these pixel counts.
QWEN25_MIN_PIXELS = 56 * 56
QWEN25_MAX_PIXELS = 28 * 28 * 16384
QWEN25_FACTOR = 28
BOX_FRAMES = ("grid1000", "resized_pixels")


@dataclass(frozen=True)
class BoxFrame:
    """The coordinate frame a VLM states boxes in: ``width`` x ``height`` units spanning the
    whole image. ``grid1000`` (Qwen2-VL, InternVL, Qwen3-VL) is 1000 x 1000 for any image;
    ``resized_pixels`` (Qwen2.5-VL) is the processor-resized image in absolute pixels."""

    kind: str = "grid1000"
    width: float = REGION_GRID
    height: float = REGION_GRID


def model_box_frame(model: str) -> str:
    """The box frame of a model family, from its id or a local folder's ``model_type``."""
    import re
    from pathlib import Path

    name = model.lower()
    config = Path(model) / "config.json"
    try:
        if config.is_file():
            name += " " + str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError):
        pass
    return "resized_pixels" if re.search(r"qwen2[._]?5[-_]?vl", name) else "grid1000"


def qwen25_resized(width: int, height: int, min_pixels: int = QWEN25_MIN_PIXELS,
                   max_pixels: int = QWEN25_MAX_PIXELS, factor: int = QWEN25_FACTOR) -> tuple[int, int]:
    """``(width, height)`` of an image after the Qwen2.5-VL processor's resize (transformers'
    own ``smart_resize`` when importable)."""
    try:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    except ImportError:  # pragma: no cover - transformers is a dependency; the formula is its own
        import math

        h_bar, w_bar = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt(height * width / max_pixels)
            h_bar, w_bar = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
        return w_bar, h_bar
    h_bar, w_bar = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return w_bar, h_bar


def box_frame(kind: str, sent_width: int, sent_height: int, min_pixels: int | None = None,
              max_pixels: int | None = None) -> BoxFrame:
    """The frame of ``kind`` for an image sent to the model at ``sent_width`` x ``sent_height``."""
    if kind == "grid1000":
        return BoxFrame()
    if kind != "resized_pixels":
        raise ValueError(f"unknown box frame {kind!r}; known: {', '.join(BOX_FRAMES)}")
    w, h = qwen25_resized(sent_width, sent_height, min_pixels or QWEN25_MIN_PIXELS, max_pixels or QWEN25_MAX_PIXELS)
    return BoxFrame(kind, float(w), float(h))


@dataclass
class Inspection:
    """The fields of one inspection answer."""

    privacy_flag: bool
    categories: list[str]
    privacy_review: list[str]
    private_caption: str
    public_caption: str
    regions: list[dict[str, Any]] = field(default_factory=list)
    # Boxes dropped because they lie outside the model's frame (or are malformed).
    regions_dropped: int = 0


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


# A coordinate this far (a share of the frame) outside it is read as on its edge, not dropped.
FRAME_TOLERANCE = 0.01


def _regions(value: Any, known: set[str], width: int, height: int,
             frame: BoxFrame = BoxFrame()) -> tuple[list[dict[str, Any]], int]:
    """Boxes in ``frame`` -> pixel boxes of the row's ``width`` x ``height`` image, and the number
    of boxes dropped: out of the frame, inverted, malformed or of an unknown category."""
    if not isinstance(value, list):
        return [], 0
    out, dropped = [], 0
    for item in value:
        if not isinstance(item, dict):
            dropped += 1
            continue
        category = _category_name(item.get("category", ""))
        bbox = item.get("bbox")
        if category not in known or not isinstance(bbox, list) or len(bbox) != 4:
            dropped += 1
            continue
        try:
            coords = [float(v) for v in bbox]
        except (TypeError, ValueError):
            dropped += 1
            continue
        extents = (frame.width, frame.height, frame.width, frame.height)
        if any(not (-FRAME_TOLERANCE * e <= v <= (1 + FRAME_TOLERANCE) * e) for v, e in zip(coords, extents)):
            dropped += 1  # outside the frame: the model used another frame, or guessed
            continue
        x0, y0, x1, y1 = (min(max(v, 0.0), e) / e for v, e in zip(coords, extents))
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            continue
        out.append({
            "category": category,
            "bbox": [round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height)],
            # The VLM states a box, it gives no confidence; 1.0 marks it as asserted.
            "score": 1.0,
            "source": "vlm",
        })
    return out, dropped


def parse_inspection(
    text: str | None,
    finished: bool,
    category_names: list[str],
    width: int = REGION_GRID,
    height: int = REGION_GRID,
    frame: BoxFrame = BoxFrame(),
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
    regions, dropped = _regions(obj.get("regions"), known, width, height, frame)
    return Inspection(
        privacy_flag=flag or bool(categories),
        categories=categories,
        privacy_review=review,
        private_caption=_required_text(obj, "private_caption", CAPTION_WORDS),
        public_caption=_required_text(obj, "public_caption", CAPTION_WORDS),
        regions=regions,
        regions_dropped=dropped,
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
