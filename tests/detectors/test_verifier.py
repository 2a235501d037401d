"""The privacy verifier on real images: identities and text before and after obscuring."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import load_example
from unsafe2safe_ray.detectors.identity import IdentityEmbedder, distance
from unsafe2safe_ray.detectors.verifier import Leak, PrivacyVerifier, VerifyReport, text_similarity
from unsafe2safe_ray.editors.classic import obscure_regions


@pytest.fixture(scope="module")
def astronaut_and_face(face_detector):
    image = load_example("astronaut.jpg")
    [face] = face_detector.detect(image)
    return image, [{"category": "people", "bbox": face.bbox}]


@pytest.fixture(scope="module")
def page_and_lines(text_detector):
    image = load_example("page.png")
    regions = [{"category": "text_and_symbols", "bbox": line.bbox, "text": line.text}
               for line in text_detector.read(image)]
    return image, regions


def test_identity_embedding_matches_the_same_person_only(astronaut_and_face, face_detector, verifier):
    image, regions = astronaut_and_face
    embedder: IdentityEmbedder = verifier.embedder
    [original] = embedder.embed(image, [regions[0]["bbox"]])
    # The same person after lossy recompression and a small shift matches ...
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 30])
    recompressed = np.roll(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1], 6, axis=1)
    [face] = face_detector.detect(recompressed)
    assert distance(original, embedder.embed(recompressed, [face.bbox])[0]) < 0.6
    # ... another person does not.
    camera = load_example("camera.jpg")
    [other] = face_detector.detect(camera)
    assert distance(original, embedder.embed(camera, [other.bbox])[0]) > 0.6


def test_astronaut_matches_before_and_not_after_the_edit(astronaut_and_face, verifier):
    image, regions = astronaut_and_face
    unedited = verifier.check(image, image.copy(), regions)
    assert not unedited.ok
    assert [leak.kind for leak in unedited.leaks] == ["face_identity"]
    assert unedited.checks["min_face_distance"] < 0.1

    edited = obscure_regions(image, regions, "blur")
    report = verifier.check(image, edited, regions)
    assert report.ok, report.leaks
    assert report.checks["faces_checked"] == 1
    assert report.checks["min_face_distance"] >= 0.6


def test_a_light_blur_still_leaks_the_identity(astronaut_and_face, verifier):
    image, regions = astronaut_and_face
    x0, y0, x1, y1 = regions[0]["bbox"]
    light = image.copy()
    light[y0:y1, x0:x1] = cv2.GaussianBlur(image[y0:y1, x0:x1], (9, 9), 0)
    report = verifier.check(image, light, regions)
    assert not report.ok
    assert report.leaks[0].bbox == regions[0]["bbox"] and report.leaks[0].detail["distance"] < 0.6


def test_face_check_finds_faces_without_given_regions(astronaut_and_face, verifier):
    image, _ = astronaut_and_face
    # A VLM gave no boxes: the verifier's own detection still checks the face.
    assert not verifier.check(image, image.copy(), []).ok


def test_page_text_is_readable_before_and_not_after_the_edit(page_and_lines, verifier):
    image, regions = page_and_lines
    assert len(regions) >= 5
    unedited = verifier.check(image, image.copy(), regions)
    assert len(unedited.leaks) == len(regions)
    assert {leak.kind for leak in unedited.leaks} == {"readable_text"}

    edited = obscure_regions(image, regions, "blur")
    report = verifier.check(image, edited, regions)
    assert report.ok, [leak.detail for leak in report.leaks]
    assert report.checks["text_checked"] == len(regions)
    assert report.checks["max_text_similarity"] < 0.5


def test_text_regions_without_strings_are_read_from_the_original(page_and_lines, verifier):
    image, regions = page_and_lines
    no_text = [{"category": r["category"], "bbox": r["bbox"]} for r in regions[:2]]
    report = verifier.check(image, image.copy(), no_text)
    assert len(report.leaks) == 2


def test_report_carries_numbers_not_text(page_and_lines, verifier):
    image, regions = page_and_lines
    as_text = str(verifier.check(image, image.copy(), regions).to_dict())
    assert "segmentation" not in as_text.lower() and "markers" not in as_text.lower()


def test_report_api_and_similarity():
    assert VerifyReport(leaks=[], checks={}).ok
    assert not VerifyReport(leaks=[Leak("people", [0, 0, 1, 1], "face_identity", {})], checks={}).ok
    assert text_similarity("KX 482 TB", "kx482tb") == 1.0
    assert text_similarity("KX 482 TB", "") == 0.0
    # Plain ratio, not token-set: one surviving word is not the whole text.
    assert text_similarity("call me at home tonight", "home") < 0.5


def test_verifier_refuses_mismatched_sizes(verifier):
    with pytest.raises(ValueError):
        verifier.check(np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8), [])


def test_default_config_is_built_when_none_is_given():
    assert PrivacyVerifier().config.face_distance_threshold == 0.6


def test_a_face_moved_elsewhere_still_leaks_and_points_at_its_new_place(astronaut_and_face, verifier):
    image, regions = astronaut_and_face
    x0, y0, x1, y1 = regions[0]["bbox"]
    moved = obscure_regions(image, regions, "fill")
    # The editor "kept" the face, just somewhere else (lower right, on the suit).
    moved[330:330 + (y1 - y0), 380:380 + (x1 - x0)] = image[y0:y1, x0:x1]
    report = verifier.check(image, moved, regions)
    assert not report.ok
    [leak] = report.leaks
    mx0, my0, _, _ = leak.detail["matched_bbox"]
    assert abs(mx0 - 380) < 30 and abs(my0 - 330) < 30
    # Escalating both boxes (what the verify stage does) removes it.
    fixed = obscure_regions(moved, [regions[0], {"category": "people", "bbox": leak.detail["matched_bbox"]}], "fill", 0.15)
    assert verifier.check(image, fixed, regions).ok
