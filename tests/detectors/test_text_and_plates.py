"""rapidocr on the sample images, plate recognition, and the no-INFO-logging rule."""

from __future__ import annotations

import logging

import numpy as np

import pytest

from conftest import load_example
from unsafe2safe_ray.detectors.plates import find_plates, looks_like_plate
from unsafe2safe_ray.detectors.text import TextLine, normalize_text


def test_page_text_is_found_and_read(text_detector):
    image = load_example("page.png")
    lines = text_detector.read(image)
    assert len(lines) >= 5
    joined = normalize_text(" ".join(line.text for line in lines))
    for word in ("regionbasedsegmentation", "markers", "background", "histogram"):
        assert word in joined
    height, width = image.shape[:2]
    for line in lines:
        x0, y0, x1, y1 = line.bbox
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def test_synthetic_plate_is_found(text_detector):
    lines = text_detector.read(load_example("licence_plate.jpg"))
    plates = find_plates(lines)
    assert [normalize_text(p.text) for p in plates] == ["kx482tb"]
    # The plate sits in the lower middle of the car (drawn at x 200-440, y 225-285).
    x0, y0, x1, y1 = plates[0].bbox
    assert 190 <= x0 and x1 <= 450 and 215 <= y0 and y1 <= 295


def test_id_card_number_and_words_are_text_not_plates(text_detector):
    lines = text_detector.read(load_example("id_card.png"))
    texts = {normalize_text(line.text) for line in lines}
    assert {"janeexample", "x7041962"} <= texts
    assert find_plates(lines) == []


@pytest.mark.parametrize("text, box, expected", [
    ("KX 482 TB", [0, 0, 200, 40], True),
    ("AB-123-CD", [0, 0, 180, 40], True),
    ("7ABC123", [0, 0, 160, 40], True),
    ("KX 482 TB", [0, 0, 40, 40], False),  # square box: not a plate
    ("X7041962", [0, 0, 160, 30], False),  # one letter: a serial number
    ("IDENTITY CARD", [0, 0, 250, 30], False),  # no digits
    ("Region-based", [0, 0, 250, 30], False),  # lower case
    ("2031-05-30", [0, 0, 150, 30], False),  # a date
])
def test_plate_rules(text, box, expected):
    assert looks_like_plate(TextLine(bbox=box, text=text, score=0.9)) is expected


def test_nothing_is_read_on_the_cat(text_detector):
    assert text_detector.read(load_example("chelsea.jpg")) == []


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_ocr_logs_nothing_below_error():
    """rapidocr's own logger does not propagate to the root, so listen on it directly: its
    start-up INFO lines and per-image warnings must be silenced (text is private)."""
    from unsafe2safe_ray.detectors.text import TextDetector

    capture = _Capture()
    logger = logging.getLogger("RapidOCR")
    logger.addHandler(capture)
    try:
        detector = TextDetector(threads=1)
        assert detector.read(load_example("licence_plate.jpg"))
        assert detector.read(load_example("chelsea.jpg")) == []  # "no text found" is a warning
    finally:
        logger.removeHandler(capture)
    assert [r.getMessage() for r in capture.records if r.levelno < logging.ERROR] == []


@pytest.mark.parametrize("shape", [(8, 3000), (3000, 8), (1, 1), (2, 5)])
def test_strips_and_tiny_images_are_read_not_refused(text_detector, shape):
    """rapidocr's detector cannot resize a strip whose short side rounds to nothing; the reader
    pads it, so such images are detected on (and kept), with boxes inside the image."""
    image = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    for box in [line.bbox for line in text_detector.read(image)] + text_detector.boxes(image):
        assert 0 <= box[0] < box[2] <= shape[1] and 0 <= box[1] < box[3] <= shape[0]
