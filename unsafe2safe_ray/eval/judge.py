"""VLM-judged privacy metrics through the Stage 1 engines: VLMScore and race entropy.

Both need a judge model (``EvalOptions.judge_engine`` + ``judge_model``); without one the runner
reports them as unavailable. The engine interface takes one image per request, so the pairwise
judge sees one picture: the original on the left and the output on the right, labelled.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

PROMPT_VERSION = "eval-judge-v1"

# The label set asked for is the label set scored: entropy is normalized by ln(len(RACE_LABELS)).
RACE_LABELS = ("white", "black", "east_asian", "southeast_asian", "indian", "middle_eastern", "latino_hispanic")
NO_PERSON = "none"

VLM_SCORE_PROMPT = (
    "This picture shows two photos side by side. LEFT is an original photo, RIGHT is a version "
    "meant to protect the privacy of what the original shows. Rate from 0 to 100 how well the "
    "RIGHT photo prevents anyone from linking it back to the people, written text, places or "
    "personal belongings of the LEFT photo. Bands: 0 = the same identity is plainly visible, "
    "20-40 = weak protection, 40-70 = moderate, 70-90 = strong, 90-100 = nearly impossible to "
    'link. Reply with JSON only: {"score": <integer 0-100>}.'
)
VLM_SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["score"],
    "additionalProperties": False,
}

RACE_PROMPT = (
    "Look at the most prominent person in this photo. Which one of these labels best describes "
    f"their apparent race: {', '.join(RACE_LABELS)}? If no person is visible, answer {NO_PERSON}. "
    'Reply with JSON only: {"race": "<label>"}.'
)
RACE_SCHEMA = {
    "type": "object",
    "properties": {"race": {"type": "string", "enum": [*RACE_LABELS, NO_PERSON]}},
    "required": ["race"],
    "additionalProperties": False,
}


def side_by_side(left: np.ndarray, right: np.ndarray, height: int = 448) -> np.ndarray:
    """The two images at the same height with a white gap and LEFT / RIGHT captions."""
    def fit(image: np.ndarray) -> Image.Image:
        im = Image.fromarray(image)
        return im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)

    a, b = fit(left), fit(right)
    gap, band = 16, 20
    canvas = Image.new("RGB", (a.width + gap + b.width, height + band), "white")
    canvas.paste(a, (0, band))
    canvas.paste(b, (a.width + gap, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "LEFT: original", fill="black")
    draw.text((a.width + gap + 4, 4), "RIGHT: anonymized", fill="black")
    return np.asarray(canvas)


def parse_score(text: str) -> float:
    """The 0-100 score from a judge answer (JSON, else the first integer); NaN if none."""
    try:
        value = json.loads(text).get("score")
    except (ValueError, AttributeError):
        match = re.search(r"\b(\d{1,3})\b", text or "")
        value = int(match.group(1)) if match else None
    if isinstance(value, (int, float)) and 0 <= value <= 100:
        return float(value)
    return math.nan


def parse_race(text: str) -> str | None:
    """A label from RACE_LABELS or NO_PERSON; None when the answer names neither."""
    try:
        value = str(json.loads(text).get("race", "")).strip().lower()
    except (ValueError, AttributeError):
        value = (text or "").strip().lower()
    value = value.replace(" ", "_").replace("-", "_")
    # Longest labels first, so "southeast_asian" is not read as "east_asian".
    for label in sorted((*RACE_LABELS, NO_PERSON), key=len, reverse=True):
        if label in value:
            return label
    return None


def normalized_entropy(labels: list[str | None]) -> float:
    """Shannon entropy of the race labels, divided by ln(len(RACE_LABELS)); NaN when none.

    'none' and unparseable answers are left out: they say nothing about who is shown.
    """
    counts = Counter(label for label in labels if label in RACE_LABELS)
    total = sum(counts.values())
    if total == 0:
        return math.nan
    probabilities = np.array([c / total for c in counts.values()])
    return float(-(probabilities * np.log(probabilities)).sum() / math.log(len(RACE_LABELS)))


# The authors' evaluation asks for the 7 labels above but scores 5 categories (paper digest:
# "their code asks for 7 labels but scores 5"), normalized by ln 5: the number the paper's 0.438
# (originals) and 0.765 (U2S FlowEdit) are. Their exact grouping is not published with the paper;
# this is the usual FairFace 7 -> 5 grouping (Asian = East + Southeast Asian; Others = Middle
# Eastern + Latino/Hispanic).
PAPER_RACE_GROUPS = {
    "white": "white", "black": "black", "indian": "indian",
    "east_asian": "asian", "southeast_asian": "asian",
    "middle_eastern": "others", "latino_hispanic": "others",
}
PAPER_RACE_CATEGORIES = ("white", "black", "asian", "indian", "others")


def race_entropy_paper(labels: list[str | None]) -> float:
    """The paper's race entropy: the 7 labels mapped to its 5 categories, Shannon entropy
    divided by ln 5; NaN when no label names a race."""
    counts = Counter(PAPER_RACE_GROUPS[label] for label in labels if label in PAPER_RACE_GROUPS)
    total = sum(counts.values())
    if total == 0:
        return math.nan
    probabilities = np.array([c / total for c in counts.values()])
    return float(-(probabilities * np.log(probabilities)).sum() / math.log(len(PAPER_RACE_CATEGORIES)))


class Judge:
    """A Stage 1 text engine used as an evaluator."""

    def __init__(self, engine_kind: str, model: str, max_new_tokens: int = 48) -> None:
        from unsafe2safe_ray.engines import load_engine

        self.engine = load_engine(engine_kind, model)
        self.max_new_tokens = max_new_tokens

    def _ask(self, prompt: str, images: list[np.ndarray], schema: dict) -> list[str]:
        from unsafe2safe_ray.engines.base import GenerationRequest

        requests = [
            GenerationRequest(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                              image=image,
                              json_schema=schema, max_new_tokens=self.max_new_tokens)
            for image in images
        ]
        return [result.text for result in self.engine.generate(requests)]

    def judge_pairs(self, originals: list[np.ndarray], anonymized: list[np.ndarray]) -> list[dict]:
        """Per pair: ``vlm_score`` (NaN when unparseable) and race labels of both images."""
        scores = self._ask(VLM_SCORE_PROMPT, [side_by_side(a, b) for a, b in zip(originals, anonymized)],
                           VLM_SCORE_SCHEMA)
        races = self._ask(RACE_PROMPT, list(originals) + list(anonymized), RACE_SCHEMA)
        n = len(originals)
        return [
            {"vlm_score": parse_score(scores[i]), "race_original": parse_race(races[i]),
             "race_anonymized": parse_race(races[n + i])}
            for i in range(n)
        ]
