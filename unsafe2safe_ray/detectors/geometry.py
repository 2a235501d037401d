"""Box geometry shared by detectors, the edit stage, the verifier and the evaluation.

Boxes are ``[x0, y0, x1, y1]`` in pixels of the decoded image (``x1``, ``y1`` exclusive), the
frame every region of a row uses. This module is the one place that computes overlaps and turns
untrusted boxes (from a VLM, from JSON) into usable ones.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BoxError(ValueError):
    """A box that cannot be read as four finite numbers."""


def box_iou_many(box: Any, boxes: Any) -> np.ndarray:
    """Intersection over union of ``box`` with each row of ``boxes`` (N x 4); shape (N,).

    Boxes with no area have an IoU of 0 with everything.
    """
    a = np.asarray(box, dtype=np.float64).reshape(4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    inter = box_intersection_many(a, b)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = np.maximum(0.0, b[:, 2] - b[:, 0]) * np.maximum(0.0, b[:, 3] - b[:, 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_intersection_many(box: Any, boxes: Any) -> np.ndarray:
    """Intersection area (pixels^2) of ``box`` with each row of ``boxes`` (N x 4); shape (N,)."""
    a = np.asarray(box, dtype=np.float64).reshape(4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.maximum(0.0, np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]))
    iy = np.maximum(0.0, np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]))
    return ix * iy


def box_iou(a: Any, b: Any) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when either has no area)."""
    return float(box_iou_many(a, [b])[0])


def parse_box(bbox: Any) -> list[float]:
    """``bbox`` as four finite floats; raises ``BoxError`` for anything else (missing, wrong
    length, text, NaN)."""
    if not isinstance(bbox, (list, tuple, np.ndarray)) or len(bbox) != 4:
        raise BoxError(f"a box needs four numbers [x0, y0, x1, y1], got {bbox!r:.80}")
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise BoxError(f"a box needs four numbers [x0, y0, x1, y1], got {bbox!r:.80}") from None
    if not all(math.isfinite(v) for v in values):
        raise BoxError(f"a box needs finite numbers, got {bbox!r:.80}")
    return values


def clip_box(bbox: Any, height: int, width: int) -> list[int] | None:
    """``bbox`` rounded outwards to whole pixels and clipped to a ``height`` x ``width`` image;
    None when nothing of it lies inside (out of bounds or degenerate). Raises ``BoxError`` for
    an unreadable box."""
    x0, y0, x1, y1 = parse_box(bbox)
    box = [max(0, math.floor(min(x0, x1))), max(0, math.floor(min(y0, y1))),
           min(int(width), math.ceil(max(x0, x1))), min(int(height), math.ceil(max(y0, y1)))]
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box
