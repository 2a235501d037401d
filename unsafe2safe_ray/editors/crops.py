"""Crop windows for region-level generative editing (``edit.scope=crops``).

Sensitive content (faces, plates, name tags, screens) usually covers a small part of an image,
and a diffusion editor's cost grows with the pixels it sees. So instead of editing the whole image
and blending the regions back, the edit stage cuts a window around each region (with context),
edits the windows at the editor's working bucket, and pastes each one back with a feathered mask
that covers its regions only. Pixels outside the masks stay byte-identical.

Coordinates are pixels of the decoded image, ``[x0, y0, x1, y1]`` with ``x1, y1`` exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from unsafe2safe_ray.editors.base import blend, region_mask, resize_image

# Words for a region's category in the crop's prompts (paper category names, records.CATEGORIES).
CATEGORY_NOUNS = {
    "people": "a person's face",
    "appearance": "a person's distinctive features",
    "health": "a medical detail",
    "text_and_symbols": "text",
    "locations_and_timestamps": "a location or timestamp",
    "personal_interactions": "people interacting",
    "professional_or_school": "a badge or uniform",
    "cultural_political_religious": "a symbol",
    "private_belongings": "a personal item",
}


@dataclass
class CropWindow:
    """One window of an image: ``box`` in image pixels and the ``regions`` inside it, with their
    boxes in window pixels (``bbox``)."""

    box: list[int]
    regions: list[dict] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in image pixels."""
        return self.box[3] - self.box[1], self.box[2] - self.box[0]


def _grown(bbox: list[int], height: int, width: int, margin: float, min_side: int) -> list[int]:
    """``bbox`` grown by ``margin`` x its longer side on every edge, to at least ``min_side``
    (centred), clipped to the image."""
    x0, y0, x1, y1 = bbox
    grow = margin * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    half_w = max((x1 - x0) / 2.0 + grow, min_side / 2.0)
    half_h = max((y1 - y0) / 2.0 + grow, min_side / 2.0)
    return [max(0, math.floor(cx - half_w)), max(0, math.floor(cy - half_h)),
            min(width, math.ceil(cx + half_w)), min(height, math.ceil(cy + half_h))]


def _overlap(a: list[int], b: list[int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def crop_windows(regions: list[dict], height: int, width: int, margin: float = 0.5,
                 min_side: int = 128) -> list[CropWindow]:
    """Windows covering every region: each region's box grown by ``margin`` (context) and to at
    least ``min_side`` pixels, clipped to the image; overlapping windows merged into their union
    until none overlap. ``regions`` must hold clipped integer boxes (``detectors.geometry.
    clip_box``). Returns windows in reading order, each listing its regions in window pixels."""
    boxes = [(_grown(r["bbox"], height, width, margin, min_side), [r]) for r in regions]
    merged = True
    while merged:
        merged = False
        out: list[tuple[list[int], list[dict]]] = []
        for box, members in boxes:
            for i, (other, other_members) in enumerate(out):
                if _overlap(box, other):
                    out[i] = ([min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]),
                               max(box[3], other[3])], other_members + members)
                    merged = True
                    break
            else:
                out.append((box, members))
        boxes = out
    windows = []
    for box, members in sorted(boxes, key=lambda b: (b[0][1], b[0][0])):
        x0, y0 = box[0], box[1]
        local = [dict(r, bbox=[r["bbox"][0] - x0, r["bbox"][1] - y0, r["bbox"][2] - x0, r["bbox"][3] - y0])
                 for r in members]
        windows.append(CropWindow(box=list(box), regions=local))
    return windows


def paste_window(image: np.ndarray, original: np.ndarray, window: CropWindow, edited_crop: np.ndarray,
                 dilation: float, feather: int) -> np.ndarray:
    """``image`` with ``edited_crop`` (any size; resized to the window) blended into the window
    inside the dilated, feathered mask of the window's regions. Every pixel outside that mask
    keeps its value in ``image``; inside, the blend mixes with ``original``'s pixels."""
    x0, y0, x1, y1 = window.box
    crop = resize_image(np.asarray(edited_crop, dtype=np.uint8), window.size)
    mask = region_mask(window.size, window.regions, dilation, feather)
    out = np.array(image, copy=True)
    inside = mask > 0
    mixed = blend(original[y0:y1, x0:x1], crop, mask)
    out[y0:y1, x0:x1][inside] = mixed[inside]
    return out


def region_prompts(regions: list[dict], target_prompt: str, instruction: str) -> tuple[str, str]:
    """(target prompt, instruction) for a crop: what the crop shows (its regions' categories)
    ahead of the image's own public caption and edit instruction."""
    nouns = list(dict.fromkeys(CATEGORY_NOUNS.get(r.get("category", ""), "a sensitive detail") for r in regions))
    subject = " and ".join(nouns) or "a sensitive detail"
    target = f"a close-up of {subject}; {target_prompt}".strip("; ")
    edit = f"{instruction} Change {subject} so that no one can be identified.".strip()
    return target, edit
