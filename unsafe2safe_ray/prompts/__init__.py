"""Versioned Stage 1 prompts, their JSON schemas, and the renderers that fill them.

Prompt texts live beside this module as YAML files (``inspect.yaml``, ``instruct.yaml``,
``criteria.yaml``), each with a ``prompt_version`` that the stages write to every row. They were
written for this project from the method's description; no text was copied from the authors.

Messages use the OpenAI chat shape with an ``{"type": "image"}`` placeholder part where the image
goes: the transformers engine passes pixels beside the messages, the vLLM engine swaps the
placeholder for an ``image_url`` data URL.

The parsers that turn model text back into fields are in ``prompts.parsers``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

import yaml

# Bounds the schema puts on free text. Characters, not words: a grammar cannot count words, but a
# character bound keeps a rambling (or random-weight) model from running out of tokens mid-string.
# About 7 characters per English word, plus slack; the parsers trim to the word limits.
CAPTION_WORDS = 50
INSTRUCTION_WORDS = 45
MAX_REVIEW_ITEMS = 5
CAPTION_CHARS = 400
INSTRUCTION_CHARS = 360
REVIEW_ITEM_CHARS = 160
MAX_REGIONS = 8
# Region boxes are asked for on a 0..1000 grid of the image, independent of its pixel size
# (Qwen2-VL, InternVL, Qwen3-VL); Qwen2.5-VL states absolute pixels instead (see parsers.BoxFrame).
REGION_GRID = 1000


@dataclass(frozen=True)
class TextLimits:
    """Character bounds the schemas put on free text (see ``CAPTION_CHARS``)."""

    caption_chars: int = CAPTION_CHARS
    instruction_chars: int = INSTRUCTION_CHARS
    review_item_chars: int = REVIEW_ITEM_CHARS
    max_review_items: int = MAX_REVIEW_ITEMS
    max_regions: int = MAX_REGIONS


@dataclass(frozen=True)
class PromptFile:
    """One prompt file: its version and its named text blocks."""

    name: str
    version: str
    blocks: Mapping[str, str]

    def block(self, key: str) -> str:
        """A named text block of the file (KeyError names the file when missing)."""
        try:
            return self.blocks[key]
        except KeyError:
            raise KeyError(f"prompt file {self.name}.yaml has no block {key!r}") from None


@functools.lru_cache(maxsize=None)
def load_prompt(name: str) -> PromptFile:
    """Load ``prompts/<name>.yaml`` from the package (cached)."""
    text = resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "prompt_version" not in data:
        raise ValueError(f"prompt file {name}.yaml has no prompt_version")
    version = str(data.pop("prompt_version"))
    return PromptFile(name=name, version=version, blocks=data)


def default_criteria() -> dict[str, str]:
    """The paper's nine categories: name -> description (names match records.CATEGORIES)."""
    return dict(load_prompt("criteria").block("criteria"))


def resolve_criteria(criteria: Mapping[str, str] | list[str] | None) -> dict[str, str]:
    """User criteria or the default nine.

    A mapping is ``name -> description``. A list may hold ``"name: description"`` strings or
    bare known category names (their default description is used).
    """
    if not criteria:
        return default_criteria()
    if isinstance(criteria, Mapping):
        out = {str(k).strip(): str(v).strip() for k, v in criteria.items()}
    else:
        defaults = default_criteria()
        out = {}
        for item in criteria:
            name, sep, description = str(item).partition(":")
            name = name.strip()
            if not sep and name not in defaults:
                raise ValueError(f"criterion {item!r} needs a description ('name: description')")
            out[name] = description.strip() if sep else defaults[name]
    bad = [n for n in out if not n or not n.replace("_", "").isalnum()]
    if bad:
        raise ValueError(f"criterion names must be identifiers like 'text_and_symbols': {bad}")
    return out


def prompt_version(*names: str) -> str:
    """The combined version string recorded in rows, e.g. ``inspect-v1+criteria-v1``."""
    return "+".join(load_prompt(n).version for n in names)


def _clean_label(label: str | None) -> str | None:
    label = (label or "").strip()
    # A label is data from the dataset: keep it from closing quotes or adding lines.
    label = " ".join(label.replace('"', "'").split())
    return label[:80] or None


def inspection_messages(
    label: str | None,
    criteria: Mapping[str, str],
    with_regions: bool = False,
    limits: TextLimits = TextLimits(),
    box_frame: str = "grid1000",
) -> list[dict[str, Any]]:
    """Chat messages for the inspection call (flag, categories, review, two captions).

    ``box_frame`` is the frame the model states boxes in (see ``parsers.BoxFrame``): the prompt
    asks for that frame, so a model is never asked for a grid it was not trained on."""
    prompt = load_prompt("inspect")
    label = _clean_label(label)
    criteria_text = "\n".join(f"  - {name}: {desc}" for name, desc in criteria.items())
    if label:
        class_hint = prompt.block("class_hint").format(label=label)
        class_rule = prompt.block("class_rule").format(label=label)
    else:
        class_hint = ""
        class_rule = prompt.block("class_rule_unlabelled")
    user = prompt.block("user").format(
        class_hint=class_hint,
        criteria=criteria_text,
        max_review_items=limits.max_review_items,
        caption_words=CAPTION_WORDS,
        class_rule=class_rule.strip() + " ",
        regions_rule=(prompt.block("regions_rule_pixels" if box_frame == "resized_pixels" else "regions_rule")
                      if with_regions else ""),
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": prompt.block("system").strip()}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user.strip()}]},
    ]


def instruction_messages(
    public_caption: str,
    label: str | None,
    combined_caption: bool = False,
) -> list[dict[str, Any]]:
    """Chat messages for the instruction call. Only the public caption (and label) go in."""
    prompt = load_prompt("instruct")
    label = _clean_label(label)
    caption = " ".join((public_caption or "").replace('"', "'").split())
    user = prompt.block("user").format(
        class_hint=prompt.block("class_hint").format(label=label) if label else "",
        public_caption=caption,
        instruction_words=INSTRUCTION_WORDS,
        class_rule=prompt.block("class_rule").format(label=label) if label else "",
        combined_rule=(
            prompt.block("combined_rule").format(caption_words=CAPTION_WORDS)
            if combined_caption else ""
        ),
    )
    return [
        {"role": "system", "content": [{"type": "text", "text": prompt.block("system").strip()}]},
        {"role": "user", "content": [{"type": "text", "text": user.strip()}]},
    ]


def _text(max_chars: int) -> dict[str, Any]:
    """A bounded one-line string: it starts with a letter or digit, so a constrained decoder
    cannot return an empty or blank value, and holds printable ASCII without quotes or
    backslashes. ASCII keeps one token at one character or more, so ``max_chars`` also bounds
    the tokens a string can take."""
    return {"type": "string", "pattern": f"^[A-Za-z0-9][ !#-\\[\\]-~]{{0,{max_chars - 1}}}$"}


def max_answer_chars(schema: dict[str, Any]) -> int:
    """An upper bound on the length of a compact JSON answer to ``schema``; with ASCII-only
    strings it bounds the generated tokens too, so ``max_new_tokens`` can be checked against it."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return 2 + sum(len(json.dumps(k)) + 4 + max_answer_chars(v) for k, v in props.items())
    if kind == "array":
        return 2 + schema.get("maxItems", 16) * (max_answer_chars(schema["items"]) + 2)
    if kind == "boolean":
        return 5
    if kind == "integer":
        return len(str(schema.get("maximum", 10**9)))
    if kind == "string" and "pattern" in schema:
        return 2 + int(schema["pattern"].rsplit(",", 1)[1].split("}")[0]) + 1
    return 256


def inspection_schema(
    category_names: list[str], with_regions: bool = False, limits: TextLimits = TextLimits()
) -> dict[str, Any]:
    """The JSON schema of the inspection answer (one object, no extra keys).

    Key order is the answer's order: flag and categories first, as the paper's model decides
    before it describes."""
    properties: dict[str, Any] = {
        "privacy_flag": {"type": "boolean"},
        "categories": {
            "type": "array",
            "items": {"type": "string", "enum": list(category_names)},
            "maxItems": len(category_names),
        },
        "privacy_review": {
            "type": "array",
            "items": _text(limits.review_item_chars),
            "maxItems": limits.max_review_items,
        },
        "private_caption": _text(limits.caption_chars),
        "public_caption": _text(limits.caption_chars),
    }
    required = list(properties)
    if with_regions:
        coordinate = {"type": "integer", "minimum": 0, "maximum": REGION_GRID}
        properties["regions"] = {
            "type": "array",
            "maxItems": limits.max_regions,
            "items": {
                "type": "object",
                "properties": {
                    "category": {"type": "string", "enum": list(category_names)},
                    "bbox": {"type": "array", "items": coordinate, "minItems": 4, "maxItems": 4},
                },
                "required": ["category", "bbox"],
                "additionalProperties": False,
            },
        }
        required.append("regions")
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def instruction_schema(combined_caption: bool = False, limits: TextLimits = TextLimits()) -> dict[str, Any]:
    """The JSON schema of the instruction answer."""
    properties: dict[str, Any] = {"edit_instruction": _text(limits.instruction_chars)}
    if combined_caption:
        properties["combined_caption"] = _text(limits.caption_chars)
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
