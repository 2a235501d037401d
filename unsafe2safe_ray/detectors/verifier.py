"""The privacy verifier: does an edited image still show the original's faces or text?

Faces: every original face (CenterFace detections plus the given ``people`` regions) is embedded
with dlib; the edited image's faces are detected and embedded too, and so is the same box of the
edited image. An original face whose best distance to any of those is below the threshold (0.6)
still shows the same person: a leak.

Text: every original text region is read (its ``text`` if the detector kept one, otherwise OCR of
the original box) and the same box of the edited image is read again. A normalized similarity at
or above the threshold means the text is still readable: a leak.

Reports carry numbers only (distances, similarities, boxes), never the text itself, because
they are written to the publishable captions table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unsafe2safe_ray.detectors.text import normalize_text

FACE_CATEGORY = "people"
TEXT_CATEGORY = "text_and_symbols"


@dataclass
class Leak:
    """One leaking region of the original: ``kind`` is ``face_identity`` or ``readable_text``;
    ``detail`` holds the measured distance/similarity and, for faces, the matching box in the
    edited image."""

    category: str
    bbox: list[int]
    kind: str
    detail: dict = field(default_factory=dict)


@dataclass
class VerifyReport:
    """The verifier's findings: ``leaks`` and summary ``checks`` (counts and extremes)."""

    leaks: list[Leak]
    checks: dict

    @property
    def ok(self) -> bool:
        """No leak found."""
        return not self.leaks

    def to_dict(self) -> dict:
        """JSON-ready form (no text content, only numbers and boxes)."""
        return {
            "ok": self.ok,
            "checks": self.checks,
            "leaks": [{"category": l.category, "bbox": l.bbox, "kind": l.kind, "detail": l.detail} for l in self.leaks],
        }


def text_similarity(a: str, b: str) -> float:
    """Normalized similarity (0..1) of two readings, compared as lower-case alphanumerics.

    Uses the plain Indel ratio, not a token-set ratio: a token-set ratio is 1.0 whenever one
    word set contains the other, so a single surviving word would read as the whole text.
    """
    from rapidfuzz import fuzz

    a, b = normalize_text(a), normalize_text(b)
    if not a or not b:
        return 0.0
    return fuzz.ratio(a, b) / 100.0


def _iou(a: list[int], b: list[int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class PrivacyVerifier:
    """Checks an (original, edited) pair for surviving identities and readable text.

    Models (CenterFace, dlib, rapidocr) load on first use and are reused for every later check.
    """

    def __init__(self, config=None) -> None:
        if config is None:
            from unsafe2safe_ray.config import VerifyConfig

            config = VerifyConfig()
        self.config = config
        self._faces = None
        self._embedder = None
        self._ocr = None

    # Models, loaded once -------------------------------------------------------------------

    def _threads(self) -> int:
        threads = getattr(self.config, "threads", 0)
        return threads if threads > 0 else max(1, int(getattr(self.config, "num_cpus", 1.0)))

    @property
    def faces(self):
        """The CenterFace detector (tuned for recall on half-obscured faces)."""
        if self._faces is None:
            from unsafe2safe_ray.detectors.faces import FaceDetector

            self._faces = FaceDetector(threads=self._threads(), score_threshold=self.config.face_score_threshold)
        return self._faces

    @property
    def embedder(self):
        """The dlib identity embedder."""
        if self._embedder is None:
            from unsafe2safe_ray.detectors.identity import IdentityEmbedder

            self._embedder = IdentityEmbedder()
        return self._embedder

    @property
    def ocr(self):
        """The rapidocr reader (low score threshold: a shaky reading of the original text still
        counts as readable)."""
        if self._ocr is None:
            from unsafe2safe_ray.detectors.text import TextDetector

            self._ocr = TextDetector(threads=self._threads(), score_threshold=0.3)
        return self._ocr

    def warm_up(self) -> None:
        """Load every model now (actors call this in ``setup``)."""
        if self.config.check_faces:
            _ = self.faces, self.embedder
        if self.config.check_text:
            _ = self.ocr

    # Checks -------------------------------------------------------------------------------

    def check(self, original: np.ndarray, edited: np.ndarray, regions: list[dict]) -> VerifyReport:
        """Compare ``edited`` with ``original`` given the original's ``regions``."""
        if original.shape != edited.shape:
            raise ValueError(f"original {original.shape} and edited {edited.shape} differ in size")
        leaks: list[Leak] = []
        checks: dict = {}
        if self.config.check_faces:
            leaks += self._check_faces(original, edited, regions, checks)
        if self.config.check_text:
            leaks += self._check_text(original, edited, regions, checks)
        return VerifyReport(leaks=leaks, checks=checks)

    def _check_faces(self, original, edited, regions, checks) -> list[Leak]:
        threshold = self.config.face_distance_threshold
        # 1. Original faces: detections, plus people regions no detection already covers.
        boxes = [face.bbox for face in self.faces.detect(original)]
        for region in regions:
            if region.get("category") == FACE_CATEGORY and region.get("bbox"):
                box = [int(v) for v in region["bbox"]]
                if all(_iou(box, known) < 0.5 for known in boxes):
                    boxes.append(box)
        checks["faces_checked"] = len(boxes)
        if not boxes:
            checks["min_face_distance"] = None
            return []
        # 2. Embed the originals, the edited image's own detections and the same boxes in it.
        original_vecs = self.embedder.embed(original, boxes)
        edited_boxes = [face.bbox for face in self.faces.detect(edited)]
        edited_vecs = self.embedder.embed(edited, edited_boxes)
        same_box_vecs = self.embedder.embed(edited, boxes)
        checks["edited_faces"] = len(edited_boxes)
        # 3. Best match of each original face.
        leaks, overall_min = [], float("inf")
        for box, vec, same_box_vec in zip(boxes, original_vecs, same_box_vecs):
            best = float(np.linalg.norm(vec - same_box_vec))
            best_box = box
            for edited_box, edited_vec in zip(edited_boxes, edited_vecs):
                dist = float(np.linalg.norm(vec - edited_vec))
                if dist < best:
                    best, best_box = dist, edited_box
            overall_min = min(overall_min, best)
            if best < threshold:
                leaks.append(Leak(category=FACE_CATEGORY, bbox=box, kind="face_identity",
                                  detail={"distance": round(best, 4), "matched_bbox": best_box}))
        checks["min_face_distance"] = round(overall_min, 4)
        return leaks

    def _check_text(self, original, edited, regions, checks) -> list[Leak]:
        threshold = self.config.text_similarity_threshold
        leaks, checked, max_similarity = [], 0, 0.0
        for region in regions:
            if region.get("category") != TEXT_CATEGORY or not region.get("bbox"):
                continue
            box = [int(v) for v in region["bbox"]]
            before = region.get("text") or self.ocr.read_box(original, box)
            if len(normalize_text(before)) < 2:
                continue  # nothing readable in the original: nothing to leak
            checked += 1
            similarity = text_similarity(before, self.ocr.read_box(edited, box))
            max_similarity = max(max_similarity, similarity)
            if similarity >= threshold:
                leaks.append(Leak(category=TEXT_CATEGORY, bbox=box, kind="readable_text",
                                  detail={"similarity": round(similarity, 4)}))
        checks["text_checked"] = checked
        checks["max_text_similarity"] = round(max_similarity, 4) if checked else None
        return leaks
