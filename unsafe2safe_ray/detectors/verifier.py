"""The privacy verifier: does an edited image still show the original's faces or text?

The one check that decides whether an edit may be published, used by the edit stage for every
editor and by nothing else (the evaluation uses the same detectors, built here, so the verifier
and ``evaluate`` never disagree for reasons that have nothing to do with privacy).

Faces: every original face (CenterFace detections plus the given ``people`` regions) is embedded
(``detectors.identity``); the edited image's faces are detected and embedded too, and so is the
same box of the edited image. An original face whose best distance to any of those is below the
threshold (0.6) still shows the same person: a leak.

Text: every original text region is read (its ``text`` if the detector kept one, otherwise OCR of
the original box) and the same box of the edited image is read again. A normalized similarity at
or above the threshold means the text is still readable: a leak.

A report says which checks ran; ``ok`` is true only when every required check ran and nothing
leaked. Reports serialize to numbers and boxes only (``leak_record``), never the text itself,
because they are written to the publishable captions table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unsafe2safe_ray.detectors.geometry import box_iou
from unsafe2safe_ray.detectors.text import normalize_text, text_similarity

FACE_CATEGORY = "people"
TEXT_CATEGORY = "text_and_symbols"

__all__ = ["Leak", "VerifyReport", "PrivacyVerifier", "leak_record", "leak_targets", "text_similarity"]


@dataclass
class Leak:
    """One leaking region of the original: ``kind`` is ``face_identity``, ``readable_text`` or
    ``unchanged_pixels`` (the edit left a region as it was); ``bbox`` is in pixels of the
    decoded image; ``detail`` holds the measured distance / similarity and, for faces, the
    matching box in the edited image (``matched_bbox``)."""

    category: str
    bbox: list[int] | None
    kind: str
    detail: dict = field(default_factory=dict)


@dataclass
class VerifyReport:
    """The verifier's findings: ``leaks``, summary ``checks`` (counts and extremes), which
    checks ran and which were required."""

    leaks: list[Leak]
    checks: dict
    checks_run: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """Required checks that did not run."""
        return [c for c in self.required if c not in self.checks_run]

    @property
    def ok(self) -> bool:
        """Every required check ran and nothing leaked."""
        return not self.leaks and not self.missing

    def to_dict(self) -> dict:
        """JSON-ready form (numbers and boxes only, never text)."""
        return {"ok": self.ok, "checks_run": list(self.checks_run), "checks_missing": self.missing,
                "checks": {k: v for k, v in self.checks.items() if isinstance(v, (bool, int, float)) or v is None},
                "leaks": [leak_record(leak) for leak in self.leaks]}


def leak_record(leak: Leak) -> dict:
    """The one serialized form of a leak: category, kind, box and measured numbers. It never
    quotes recognized text (the record goes to the publishable ``verification`` column)."""
    numbers = {k: round(float(v), 4) for k, v in (leak.detail or {}).items()
               if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    return {"category": leak.category, "kind": leak.kind,
            "bbox": [round(float(v), 1) for v in leak.bbox] if leak.bbox else None, **numbers}


def leak_targets(report: VerifyReport, regions: list[dict]) -> list[dict]:
    """The regions to obscure again for ``report``: each leak's box, plus the output box a face
    matched (a face may match the original at another place of the edited image). A leak without
    a location falls back to every known region."""
    targets, unlocated = [], False
    for leak in report.leaks:
        if not leak.bbox:
            unlocated = True
            continue
        targets.append({"category": leak.category, "bbox": list(leak.bbox)})
        matched = (leak.detail or {}).get("matched_bbox")
        if matched and list(matched) != list(leak.bbox):
            targets.append({"category": leak.category, "bbox": list(matched)})
    return targets + list(regions) if unlocated else targets


class PrivacyVerifier:
    """Checks an (original, edited) pair for surviving identities and readable text.

    Models (CenterFace, dlib, rapidocr) load on first use and are reused for every later check.
    """

    def __init__(self, config=None, threads: int = 1) -> None:
        if config is None:
            from unsafe2safe_ray.config import VerifyConfig

            config = VerifyConfig()
        self.config = config
        self.threads = max(1, int(config.threads or threads))
        self._faces = None
        self._embedder = None
        self._ocr = None

    # Models, loaded once -------------------------------------------------------------------

    def _threads(self) -> int:
        return self.threads

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

            self._embedder = IdentityEmbedder(same_identity_distance=self.config.face_distance_threshold)
        return self._embedder

    @property
    def ocr(self):
        """The rapidocr reader (low score threshold: a shaky reading of the original text still
        counts as readable)."""
        if self._ocr is None:
            from unsafe2safe_ray.detectors.text import TextDetector

            self._ocr = TextDetector(threads=self._threads(), score_threshold=self.config.text_score_threshold)
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
        return VerifyReport(leaks=leaks, checks=checks, checks_run=self.config.enabled_checks(),
                            required=list(self.config.required_checks))

    def _check_faces(self, original, edited, regions, checks) -> list[Leak]:
        from unsafe2safe_ray.detectors.identity import distance

        # 1. Original faces: detections, plus people regions no detection already covers.
        boxes = [face.bbox for face in self.faces.detect(original)]
        for region in regions:
            if region.get("category") == FACE_CATEGORY and region.get("bbox"):
                box = [int(v) for v in region["bbox"]]
                if all(box_iou(box, known) < 0.5 for known in boxes):
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
            best, best_box, best_vec = distance(vec, same_box_vec), box, same_box_vec
            for edited_box, edited_vec in zip(edited_boxes, edited_vecs):
                dist = distance(vec, edited_vec)
                if dist < best:
                    best, best_box, best_vec = dist, edited_box, edited_vec
            overall_min = min(overall_min, best)
            if self.embedder.same_identity(vec, best_vec):
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
