"""Licence plates, found two ways:

1. by what they say: an OCR line that reads like a plate (a short upper-case alphanumeric string
   with letters and digits, in a wide box), ``looks_like_plate``;
2. by how they look, without reading them: ``find_plate_shapes`` looks for plate-shaped
   rectangles (closed contours of the edge map, and the text detector's line boxes) whose inside
   has character texture (dark strokes crossing the middle line on a lighter, contrasting
   ground). This finds plates too small, blurred or skewed for OCR to read.

No plate detector with shipped weights exists on PyPI under a permissive licence (the ALPR
packages download YOLO weights at run time, and OpenCV 5 no longer ships its plate cascades),
so the second way is classical geometry and texture, with thresholds tuned to leave the sample
negatives (cat, coffee, portraits, a printed page) untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from unsafe2safe_ray.detectors.geometry import box_intersection_many, box_iou_many
from unsafe2safe_ray.detectors.text import TextLine

# What a plate may print: upper-case letters, digits and the separators plates use.
_PLATE_CHARS = re.compile(r"^[A-Z0-9][A-Z0-9 \-.·:]*[A-Z0-9]$")


@dataclass(frozen=True)
class PlateRules:
    """Shape of a plate reading: ``min_chars``..``max_chars`` alphanumerics (separators not
    counted), at least ``min_letters`` letters and ``min_digits`` digits, box width/height in
    ``min_aspect``..``max_aspect``, at most ``max_groups`` space-separated groups.

    Two letters and two digits: nearly every plate format has both, while card and serial
    numbers (one letter and many digits) and upper-case words do not.
    """

    min_chars: int = 4
    min_letters: int = 2
    min_digits: int = 2
    max_chars: int = 10
    min_aspect: float = 1.5
    max_aspect: float = 12.0
    max_groups: int = 3


def looks_like_plate(line: TextLine, rules: PlateRules = PlateRules()) -> bool:
    """Whether an OCR line reads like a licence plate (see ``PlateRules``)."""
    text = line.text.strip()
    if not _PLATE_CHARS.match(text):
        return False
    chars = re.sub(r"[^A-Z0-9]", "", text)
    if not rules.min_chars <= len(chars) <= rules.max_chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    if letters < rules.min_letters or len(chars) - letters < rules.min_digits:
        return False
    if len(text.split()) > rules.max_groups:
        return False
    x0, y0, x1, y1 = line.bbox
    aspect = (x1 - x0) / max(1, y1 - y0)
    return rules.min_aspect <= aspect <= rules.max_aspect


def find_plates(lines: list[TextLine], rules: PlateRules = PlateRules()) -> list[TextLine]:
    """The OCR lines that read like licence plates."""
    return [line for line in lines if looks_like_plate(line, rules)]


@dataclass(frozen=True)
class PlateShapeRules:
    """What a plate looks like without reading it: an (allowed to be rotated) rectangle of
    ``min_aspect``..``max_aspect`` width/height, at least ``min_height`` px high and at most
    ``max_width_fraction`` of the image wide, filling at least ``min_rectangularity`` of its
    minimum-area rectangle; inside, at least ``min_transitions`` dark/light changes along the
    middle line (two per character), a ``min_contrast`` grey-level spread (5th to 95th
    percentile), and dark strokes covering ``min_dark``..``max_dark`` of the inside."""

    min_aspect: float = 1.8
    max_aspect: float = 7.0
    min_height: int = 8
    max_width_fraction: float = 0.5
    min_rectangularity: float = 0.85
    min_transitions: int = 4
    min_contrast: float = 40.0
    min_dark: float = 0.0
    max_dark: float = 0.6


@dataclass
class PlateShape:
    """A plate found by shape and texture: axis-aligned ``bbox`` [x0, y0, x1, y1] and a
    ``score`` in 0..1 (how plate-like the inside is; no text is read)."""

    bbox: list[int]
    score: float


def find_plate_shapes(image: np.ndarray, text_boxes: list[list[int]] | None = None,
                      rules: PlateShapeRules = PlateShapeRules()) -> list[PlateShape]:
    """Plate-shaped, character-textured rectangles of an RGB uint8 image (see the module
    docstring). ``text_boxes`` (the text detector's line boxes, readable or not) are tried as
    candidates too. Overlapping finds are merged; highest score first."""
    import cv2

    gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    candidates: list[tuple[np.ndarray, tuple[int, int, int, int]]] = []
    edges = cv2.dilate(cv2.Canny(gray, 40, 120), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(edges, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if h < rules.min_height or w < 2 * rules.min_height or w > rules.max_width_fraction * width:
            continue
        rect = cv2.minAreaRect(contour)
        rw, rh = rect[1]
        long_side, short_side = max(rw, rh), min(rw, rh)
        if short_side < rules.min_height or not rules.min_aspect <= long_side / short_side <= rules.max_aspect:
            continue
        if cv2.contourArea(contour) < rules.min_rectangularity * rw * rh:
            continue
        candidates.append((cv2.boxPoints(rect), (x, y, x + w, y + h)))
    for x0, y0, x1, y1 in text_boxes or []:
        # A text line box hugs the characters: grow it to take in the plate's ground.
        pad_x, pad_y = int(0.08 * (x1 - x0)) + 2, int(0.25 * (y1 - y0)) + 2
        box = (max(0, x0 - pad_x), max(0, y0 - pad_y), min(width, x1 + pad_x), min(height, y1 + pad_y))
        w, h = box[2] - box[0], box[3] - box[1]
        if h >= rules.min_height and rules.min_aspect <= w / h <= rules.max_aspect and w <= rules.max_width_fraction * width:
            corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]]], np.float32)
            candidates.append((corners, box))
    found: list[PlateShape] = []
    for corners, box in candidates:
        score = _plate_texture(gray, corners, rules)
        if score > 0:
            found.append(PlateShape(bbox=[int(v) for v in box], score=score))
    return _merge(found)


def _plate_texture(gray: np.ndarray, corners: np.ndarray, rules: PlateShapeRules) -> float:
    """How plate-like the inside of the rectangle ``corners`` is (0 = not a plate): the
    rectangle is warped upright and its inner part (borders cut off) checked for strokes."""
    import cv2

    corners = _order_corners(corners)
    w = int(round(max(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[2] - corners[3]))))
    h = int(round(max(np.linalg.norm(corners[3] - corners[0]), np.linalg.norm(corners[2] - corners[1]))))
    if h < rules.min_height or w < 2 * rules.min_height:
        return 0.0
    target = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    upright = cv2.warpPerspective(gray, cv2.getPerspectiveTransform(corners, target), (w, h))
    inner = upright[h // 5 : h - h // 5, w // 12 : w - w // 12].astype(np.float32)
    if inner.size == 0 or min(inner.shape) < 3:
        return 0.0
    p5, median, p95 = np.percentile(inner, [5, 50, 95])
    contrast = p95 - p5
    if contrast < rules.min_contrast:
        return 0.0
    # Dark characters on a light ground, or light on dark: strokes are on the minority side.
    dark = inner < (p5 + p95) / 2
    if dark.mean() > 0.5:
        dark = ~dark
    dark_fraction = float((inner < median - 0.25 * contrast).mean()) if dark.mean() > 0 else 0.0
    if not rules.min_dark <= dark.mean() <= rules.max_dark:
        return 0.0
    middle = dark[dark.shape[0] // 2 - 1 : dark.shape[0] // 2 + 2].any(axis=0)
    transitions = int(np.abs(np.diff(middle.astype(np.int8))).sum())
    if transitions < rules.min_transitions:
        return 0.0
    # Characters span most of the plate's height: many columns hold a stroke through the middle.
    return float(min(1.0, 0.5 + 0.02 * transitions + 0.1 * min(1.0, contrast / 120.0) + 0.1 * min(1.0, dark_fraction * 4)))


def _order_corners(points: np.ndarray) -> np.ndarray:
    """Four points as top-left, top-right, bottom-right, bottom-left (long side horizontal)."""
    points = np.asarray(points, np.float32).reshape(4, 2)
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    ordered = points[np.argsort(angles)]  # clockwise from the top-left quadrant in image axes
    start = int(np.argmin(ordered.sum(axis=1)))
    ordered = np.roll(ordered, -start, axis=0)
    if np.linalg.norm(ordered[1] - ordered[0]) < np.linalg.norm(ordered[3] - ordered[0]):
        ordered = np.roll(ordered, -1, axis=0)  # a tall rectangle: turn it so its long side lies flat
    return ordered


def _merge(found: list[PlateShape]) -> list[PlateShape]:
    """Drop finds that overlap a better one (IoU > 0.3, or mostly inside it: a plate's inner
    and outer border contours)."""
    found = sorted(found, key=lambda p: -p.score)
    kept: list[PlateShape] = []
    for plate in found:
        if kept:
            boxes = np.array([k.bbox for k in kept], np.float64)
            area = max(1, (plate.bbox[2] - plate.bbox[0]) * (plate.bbox[3] - plate.bbox[1]))
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            inter = box_intersection_many(plate.bbox, boxes)
            if (box_iou_many(plate.bbox, boxes) > 0.3).any() or (inter / np.minimum(area, areas) > 0.7).any():
                continue
        kept.append(plate)
    return kept
