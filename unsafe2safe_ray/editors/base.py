"""The editor interface of Stage 2. One editor per file; editors share only image utilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EditRequest:
    """One image to edit, with the Stage 1 texts that drive the edit.

    ``regions`` are ``{category, bbox: [x0, y0, x1, y1], score, text?}`` dicts in pixel
    coordinates of ``image``. ``source_prompt`` describes the real image (the private caption),
    ``target_prompt`` the wanted one (combined or public caption).
    """

    image: np.ndarray  # HxWx3 uint8
    source_prompt: str = ""
    target_prompt: str = ""
    instruction: str = ""
    regions: list[dict] = field(default_factory=list)
    seed: int = 0


class Editor:
    """Turns a batch of requests into edited images of the same sizes."""

    name = "editor"

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        raise NotImplementedError
