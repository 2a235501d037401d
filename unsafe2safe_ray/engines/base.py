"""The text-generation interface of Stage 1 (VLM captions, LLM instructions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GenerationRequest:
    """One prompt: chat messages, an optional image, and the JSON schema the answer must obey.

    ``messages`` use the OpenAI chat shape; a ``{"type": "image"}`` content part marks where
    ``image`` (HxWx3 uint8) goes. ``temperature`` 0 means greedy decoding.
    """

    messages: list[dict]
    image: np.ndarray | None = None
    json_schema: dict | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0


@dataclass
class GenerationResult:
    """The generated text of one request. ``finished`` is False when the token limit cut it."""

    text: str
    finished: bool = True  # False when the token limit cut the answer
    meta: dict = field(default_factory=dict)


class TextEngine:
    """Generates one result per request, in order."""

    name = "engine"

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Generate one result per request, in the requests' order."""
        raise NotImplementedError


def fit_image(pixels: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``pixels`` so that the longer side is at most ``max_side`` (aspect kept).

    VLMs tile or patch large images into thousands of tokens; the paper's model sees one 448 px
    tile, so sending more pixels only costs time and context.
    """
    height, width = pixels.shape[:2]
    size = fitted_size(width, height, max_side)
    if size == (width, height):
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def fitted_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` after ``fit_image`` with ``max_side``: what the engine sends."""
    if not max_side or max(height, width) <= max_side:
        return width, height
    scale = max_side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))
