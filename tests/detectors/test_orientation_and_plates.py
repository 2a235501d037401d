"""Issue 13 units: text at every right angle and stacked in a column, plates without reading them,
faces turned sideways (aligned identity), and a verifier that does not cry wolf on a filled face."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from conftest import load_example
from unsafe2safe_ray.detectors.identity import face_roll_degrees
from unsafe2safe_ray.detectors.plates import find_plate_shapes
from unsafe2safe_ray.detectors.text import TextLine, join_stacked, normalize_text
from unsafe2safe_ray.detectors.verifier import Leak, leak_record, leak_summary
from unsafe2safe_ray.editors.classic import obscure_regions

LINES = ["Phone 0171 555 0123", "Account 12345678"]


def _document() -> np.ndarray:
    img = Image.new("RGB", (460, 130), (235, 232, 225))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(LINES):
        draw.text((20, 20 + i * 48), line, fill=(20, 20, 30), font=ImageFont.load_default(size=28))
    return np.asarray(img)


@pytest.mark.parametrize("turns", [1, 2])  # 0 and 270 read without help; all four: tests/test_recall.py
def test_a_document_reads_in_every_right_angle_orientation(text_detector, turns):
    image = np.ascontiguousarray(np.rot90(_document(), turns))
    read = {normalize_text(line.text) for line in text_detector.read(image)}
    assert {normalize_text(line) for line in LINES} <= read


def test_stacked_characters_are_one_column_not_dropped(text_detector):
    img = Image.new("RGB", (200, 300), (240, 240, 240))
    draw = ImageDraw.Draw(img)
    for i, ch in enumerate("HOTEL7"):
        draw.text((80, 20 + i * 42), ch, fill=(10, 10, 10), font=ImageFont.load_default(size=34))
    lines = text_detector.read(np.asarray(img))
    assert [normalize_text(line.text) for line in lines] == ["hotel7"]


def test_join_stacked_joins_columns_and_leaves_paragraphs():
    column = [TextLine([10, 10 + 30 * i, 30, 36 + 30 * i], ch, 0.99) for i, ch in enumerate("AB7")]
    paragraph = [TextLine([100, 10, 400, 30], "first line", 0.9), TextLine([100, 34, 380, 54], "second", 0.9)]
    joined = join_stacked(column + paragraph)
    assert [line.text for line in joined] == ["AB7", "first line", "second"]
    assert joined[0].bbox == [10, 10, 30, 96] and joined[0].score == 0.99


@pytest.mark.parametrize("char_px, blur", [(10, 0.6), (14, 1.6), (20, 2.5)])
def test_small_and_blurred_plates_are_found_without_reading_them(text_detector, char_px, blur):
    canvas = Image.fromarray(load_example("coffee.jpg")).resize((960, 540)).filter(ImageFilter.GaussianBlur(4))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=int(char_px / 0.72))
    left, top, right, bottom = draw.textbbox((0, 0), "KX 482 TB", font=font)
    pw, ph = int((right - left) * 1.25), int((bottom - top) * 1.9)
    x, y = 420, 300
    draw.rounded_rectangle([x - pw, y - 3 * ph, x + 2 * pw, y + 2 * ph], radius=6, fill=(150, 24, 30))
    draw.rectangle([x, y, x + pw, y + ph], fill=(245, 245, 240), outline=(20, 20, 20), width=max(1, ph // 18))
    draw.text((x + pw / 2 - (right - left) / 2 - left, y + ph / 2 - (bottom - top) / 2 - top), "KX 482 TB",
              font=font, fill=(15, 15, 15))
    image = np.asarray(canvas.filter(ImageFilter.GaussianBlur(blur)))
    _, boxes = text_detector.read_with_boxes(image)
    [plate] = find_plate_shapes(image, boxes)
    x0, y0, x1, y1 = plate.bbox
    assert abs(x0 - x) <= 4 and abs(y0 - y) <= 4 and abs(x1 - (x + pw)) <= 4 and abs(y1 - (y + ph)) <= 4


@pytest.mark.parametrize("name", ["camera.jpg", "chelsea.jpg", "coffee.jpg"])
def test_no_plate_shapes_on_photos_without_plates(text_detector, name):
    image = load_example(name)
    _, boxes = text_detector.read_with_boxes(image)
    assert find_plate_shapes(image, boxes) == []


@pytest.mark.parametrize("turns, roll", [(0, 0.0), (1, -90.0), (2, -180.0), (3, 90.0)])
def test_face_roll_from_landmarks(face_detector, turns, roll):
    image = np.ascontiguousarray(np.rot90(load_example("astronaut.jpg"), turns))
    [face] = face_detector.detect(image)
    assert abs(abs(face_roll_degrees(face.landmarks)) - abs(roll)) < 1e-6


@pytest.mark.parametrize("turns", [1, 3])
def test_sideways_portrait_matches_itself_and_not_its_filled_version(face_detector, verifier, turns):
    """Like with like: a sideways face is embedded upright, so it matches the upright portrait;
    and once its face is solidly filled the verifier reports no identity leak (the bug: a
    rotated portrait failed on every rerun)."""
    from unsafe2safe_ray.detectors.identity import distance

    upright = load_example("astronaut.jpg")
    [reference] = face_detector.detect(upright)
    image = np.ascontiguousarray(np.rot90(upright, turns))
    [face] = face_detector.detect(image)
    embedder = verifier.embedder
    aligned = embedder.align(image, face.bbox, face.landmarks, refine=verifier._refine_upright)
    [vec] = embedder.embed_aligned(image, [aligned])
    assert distance(vec, embedder.embed(upright, [reference.bbox])[0]) < 0.6

    regions = [{"category": "people", "bbox": face.bbox}]
    filled = obscure_regions(image, regions, "fill", 0.15)
    report = verifier.check(image, filled, regions)
    assert report.ok, report.to_dict()
    assert report.checks["min_face_distance"] >= 0.6


def test_a_solid_fill_can_never_leak_an_identity(verifier):
    image = load_example("astronaut.jpg")
    [face] = verifier.faces.detect(image)
    filled = image.copy()
    x0, y0, x1, y1 = face.bbox
    filled[y0:y1, x0:x1] = 127
    report = verifier.check(image, filled, [{"category": "people", "bbox": face.bbox}])
    assert report.ok and report.checks["faces_filled"] == 1


def test_leaks_name_their_check_and_score_without_text():
    leaks = [Leak("people", [1, 2, 30, 40], "face_identity", {"distance": 0.41234, "threshold": 0.6,
                                                                  "matched_bbox": [1, 2, 30, 40]}),
             Leak("text_and_symbols", [5, 5, 90, 20], "readable_text", {"similarity": 0.9, "threshold": 0.5})]
    summary = leak_summary(leaks)
    assert "faces check: people/face_identity distance 0.412 < 0.6 at [1, 2, 30, 40]" in summary
    assert "text check: text_and_symbols/readable_text similarity 0.900 >= 0.5" in summary
    assert json.dumps([leak_record(leak) for leak in leaks])  # numbers and boxes only


def test_rotated_text_that_stays_readable_is_a_leak(verifier):
    image = np.ascontiguousarray(np.rot90(_document(), 1))
    lines = verifier.ocr.read(image)
    regions = [{"category": "text_and_symbols", "bbox": line.bbox, "text": line.text} for line in lines]
    assert len(regions) == 2
    # A light blur leaves the rotated numbers readable: the verifier must say so.
    light = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)))
    report = verifier.check(image, light, regions)
    assert [leak.kind for leak in report.leaks] == ["readable_text", "readable_text"]
    # A fill hides them.
    assert verifier.check(image, obscure_regions(image, regions, "fill", 0.1), regions).ok
