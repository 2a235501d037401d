"""CenterFace on the sample images, its decoding and the small-face paths (tiles, upscaling), and
the MTCNN small-face pass that ``FaceDetector`` adds for crowds and large images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import load_example
from unsafe2safe_ray.detectors.faces import FaceDetector, SmallFaceDetector, nms, threads_for
from unsafe2safe_ray.detectors.geometry import box_iou

# Hand-measured face boxes of the samples (x0, y0, x1, y1), loose: hair and chin included.
ASTRONAUT_FACE = [175, 50, 280, 185]
CAMERA_FACE = [195, 110, 265, 205]


_iou = box_iou


@pytest.mark.parametrize("name, expected", [("astronaut.jpg", ASTRONAUT_FACE), ("camera.jpg", CAMERA_FACE)])
def test_finds_the_one_face_of_each_portrait(face_detector, name, expected):
    faces = face_detector.detect(load_example(name))
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.7
    assert _iou(face.bbox, expected) > 0.5
    # Landmarks (eyes, nose, mouth) fall inside the box.
    x0, y0, x1, y1 = face.bbox
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face.landmarks)


@pytest.mark.parametrize("name", ["chelsea.jpg", "coffee.jpg", "page.png", "licence_plate.jpg"])
def test_no_face_on_negatives(face_detector, name):
    assert face_detector.detect(load_example(name)) == []


def _face_on_canvas(canvas_hw, face_px, at):
    canvas = np.full((*canvas_hw, 3), 190, dtype=np.uint8)
    face = cv2.resize(load_example("astronaut.jpg")[40:200, 150:310], (face_px, face_px), interpolation=cv2.INTER_AREA)
    y, x = at
    canvas[y : y + face_px, x : x + face_px] = face
    return canvas, [x, y, x + face_px, y + face_px]


def test_small_face_in_large_image_needs_the_tiles():
    # A 48 px face in a 3200 px image: the global pass shrinks it to about 19 px, too small.
    image, where = _face_on_canvas((2000, 3200), 48, (1500, 2600))
    tiled = FaceDetector(threads=1, max_side=1280, tile_size=800, zoom=0, small_faces=False)
    global_only = FaceDetector(threads=1, max_side=1280, tile_size=0, zoom=0, small_faces=False)
    found = tiled.detect(image)
    assert len(found) == 1 and _iou(found[0].bbox, where) > 0.3
    assert global_only.detect(image) == []


def test_tiny_face_in_small_image_needs_the_upscale():
    # A 16 px face: CenterFace needs about 25 px, which the doubling provides.
    image, where = _face_on_canvas((160, 200), 16, (70, 90))
    upscaled = FaceDetector(threads=1, upscale_below=400, zoom=0, small_faces=False).detect(image)
    native = FaceDetector(threads=1, upscale_below=0, zoom=0, small_faces=False).detect(image)
    assert len(upscaled) == 1 and _iou(upscaled[0].bbox, where) > 0.3
    assert native == []


def test_zoom_finds_the_small_face_the_base_pass_misses():
    # A 48 px face in a 3200 px image without tiles: the base pass sees a weak 19 px peak, and
    # the zoomed window around it finds the face.
    image, where = _face_on_canvas((2000, 3200), 48, (1500, 2600))
    found = FaceDetector(threads=1, max_side=1280, tile_size=0, small_faces=False).detect(image)
    assert len(found) == 1 and _iou(found[0].bbox, where) > 0.3


@pytest.mark.parametrize("face_px", [500, 700, 1000])
def test_frame_filling_face_needs_the_coarse_pass(face_px):
    # CenterFace's size head saturates near 400 px: a face filling the frame scores low at full
    # size; the coarse pass sees it at about 300 px.
    import skimage.data

    face = (skimage.data.lfw_subset()[1] * 255).astype(np.uint8)
    image = cv2.resize(np.stack([face] * 3, -1), (face_px, face_px), interpolation=cv2.INTER_CUBIC)
    pad = face_px // 14
    image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    where = [pad, pad, pad + face_px, pad + face_px]
    found = FaceDetector(threads=1).detect(image)
    assert len(found) == 1 and _iou(found[0].bbox, where) > 0.4
    if face_px == 700:
        assert FaceDetector(threads=1, coarse_side=0, small_faces=False).detect(image) == []


def test_nms_keeps_the_best_and_drops_contained_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [2, 2, 6, 6]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)
    kept = nms(boxes, scores, 0.3)
    # The small box scores highest; the big overlapping pair keeps its best; far box kept.
    assert sorted(kept) == [0, 2, 3]


def test_threads_follow_the_actor_cpus():
    from unsafe2safe_ray.config import DetectConfig

    assert threads_for(DetectConfig(num_cpus=0.5)) == 1
    assert threads_for(DetectConfig(num_cpus=4)) == 4
    assert threads_for(DetectConfig(num_cpus=4, threads=2)) == 2


# -- the small-face pass (MTCNN) ---------------------------------------------------------------

def _crowd(face_px: int, count: int = 6, size=(560, 1280)):
    """``count`` astronaut faces of ``face_px`` on a plain canvas, and their boxes."""
    canvas = np.full((*size, 3), 190, dtype=np.uint8)
    face = cv2.resize(load_example("astronaut.jpg")[40:200, 150:310], (face_px, face_px), interpolation=cv2.INTER_AREA)
    boxes = []
    for i in range(count):
        x, y = 60 + i * 180, 80 + (i % 2) * 200
        canvas[y : y + face_px, x : x + face_px] = face
        boxes.append([x, y, x + face_px, y + face_px])
    return canvas, boxes


def _found(faces, where) -> bool:
    return any(_iou(f.bbox, where) > 0.2 for f in faces)


@pytest.fixture(scope="module")
def small_face_detector():
    return SmallFaceDetector(threads=1)


def test_small_pass_finds_11_px_faces(face_detector):
    # 16 px head crops: the face itself (brows to chin) is about 11 px.
    image, boxes = _crowd(16)
    with_pass = face_detector.detect(image)
    assert all(_found(with_pass, b) for b in boxes), [f.bbox for f in with_pass]
    assert len(with_pass) == len(boxes)


def test_small_pass_boxes_are_grown_around_mtcnns_tight_box(small_face_detector):
    image, boxes = _crowd(20)
    found, scores, landmarks = small_face_detector.detect(image)
    assert len(found) == len(boxes) and (scores >= 0.5).all()
    assert all(max(_iou(f, box) for f in found) > 0.4 for box in boxes)
    tight = SmallFaceDetector(threads=1, margin=0.0).detect(image)[0]
    for grown in found:
        inner = max(tight, key=lambda t: _iou(t, grown))
        assert grown[0] < inner[0] and grown[1] < inner[1] and grown[2] > inner[2] and grown[3] > inner[3]
        width = inner[2] - inner[0]
        assert (grown[2] - grown[0]) == pytest.approx(width * (1 + 2 * small_face_detector.margin), rel=0.01)
    # Five landmarks (eyes, nose, mouth corners) per face, inside its box.
    assert landmarks.shape == (len(found), 10)
    for box, points in zip(found, landmarks):
        assert (box[0] <= points[0::2]).all() and (points[0::2] <= box[2]).all()
        assert (box[1] <= points[1::2]).all() and (points[1::2] <= box[3]).all()


def test_small_pass_runs_in_strips_with_the_same_result(small_face_detector):
    image, _ = _crowd(16)
    whole = small_face_detector.detect(image)
    stripped = SmallFaceDetector(threads=1)
    stripped.strip_pixels = 64 * 1280  # P-Net sees 64-row strips (16 rows of overlap)
    parts = stripped.detect(image)
    assert len(parts[0]) == len(whole[0])
    for box in whole[0]:
        assert max(_iou(box, other) for other in parts[0]) > 0.9


def test_small_pass_runs_only_on_large_images_or_groups(face_detector, monkeypatch):
    calls = []
    original = face_detector.small.detect
    monkeypatch.setattr(face_detector.small, "detect", lambda image: calls.append(image.shape) or original(image))
    face_detector.detect(load_example("astronaut.jpg"))  # one face, 512 x 512: an ordinary photo
    assert calls == []
    face_detector.detect(np.full((600, 1100, 3), 128, np.uint8))  # large enough to hold a crowd
    assert calls == [(600, 1100, 3)]
    group, _ = _crowd(64, count=3, size=(400, 640))  # small image, but CenterFace finds a group
    face_detector.detect(group)
    assert len(calls) == 2


@pytest.mark.parametrize("name", ["astronaut.jpg", "camera.jpg", "chelsea.jpg", "coffee.jpg", "page.png",
                                  "licence_plate.jpg"])
def test_small_pass_adds_no_face_to_the_samples(name):
    # Forced on (every image gets the pass): no small face where there is none, and the
    # portraits keep their one face.
    forced = FaceDetector(threads=1, small_face_min_pixels=0)
    expected = 1 if name in ("astronaut.jpg", "camera.jpg") else 0
    assert len(forced.detect(load_example(name))) == expected
