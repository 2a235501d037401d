"""The text-generation interface of Stage 1 (VLM captions, LLM instructions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class GenerationRequest:
    """One prompt: chat messages, an optional image, and the JSON schema the answer must obey."""

    messages: list[dict]
    image: np.ndarray | None = None
    json_schema: dict | None = None
    max_new_tokens: int = 256


@dataclass
class GenerationResult:
    text: str
    finished: bool = True  # False when the token limit cut the answer
    meta: dict = field(default_factory=dict)


class TextEngine:
    """Generates one result per request, in order."""

    name = "engine"

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        raise NotImplementedError
