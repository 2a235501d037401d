"""The privacy verifier: does an edited image still show the original's faces or text?

The one check that decides whether an edit may be published, used by the edit stage for every
editor and by nothing else (the evaluation uses the same detectors, built here, so the verifier
and ``evaluate`` never disagree for reasons that have nothing to do with privacy).

Faces: every original face (CenterFace detections plus the given ``people`` regions) is embedded
(``detectors.identity``); the edited image's faces are detected and embedded too, and so is the
same box of the edited image. Like is compared with like: a face turned sideways is embedded
upright (turned by its landmarks' roll), and the same box of the edited image is turned the same
way. A box whose face area the edit filled solidly is not embedded at all (a flat patch has no
identity, and dlib's descriptor of one is noise); it counts as distance 1.0 (``FILLED_DISTANCE``)
and ``faces_filled`` says how many there were. An original face whose best distance to any of
those is below the threshold (0.6) still shows the same person: a leak.

Text: every original text region is read (its ``text`` if the detector kept one, otherwise OCR of
the original box) and the same box of the edited image is read again in every orientation (as
one line, a quarter turn each way, with and without the angle classifier). The highest normalized
similarity at or above the threshold means the text is still readable: a leak.

Each leak carries its measured score and the threshold it crossed; ``leak_record`` serializes it
and ``leak_summary`` writes the one-line form used in errors.

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

__all__ = ["Leak", "VerifyReport", "PrivacyVerifier", "leak_record", "leak_summary", "leak_targets", "text_similarity"]


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

    def __init__(self, config=None, threads: int = 1, face_settings: dict | None = None) -> None:
        """``config``: a ``VerifyConfig`` (defaults when None); ``face_settings``: ``FaceDetector``
        keyword arguments (the detect stage's scales, ``DetectConfig.face_detector_kwargs``),
        with ``config.face_score_threshold`` taking the place of their score threshold."""
        if config is None:
            from unsafe2safe_ray.config import VerifyConfig

            config = VerifyConfig()
        self.config = config
        self.face_settings = dict(face_settings or {})
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

            self._faces = FaceDetector(threads=self._threads(),
                                       **{**self.face_settings, "score_threshold": self.config.face_score_threshold})
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

        # 1. Original faces: detections (with landmarks), plus people regions no detection covers.
        faces = [(face.bbox, face.landmarks) for face in self.faces.detect(original)]
        for region in regions:
            if region.get("category") == FACE_CATEGORY and region.get("bbox"):
                box = [int(v) for v in region["bbox"]]
                if all(box_iou(box, known) < 0.5 for known, _ in faces):
                    faces.append((box, None))
        checks["faces_checked"] = len(faces)
        if not faces:
            checks["min_face_distance"] = None
            return []
        # 2. Embed like with like: each original face turned upright by its own landmarks, and
        #    the same box of the edited image turned the same way; the edited image's own
        #    detections each aligned by theirs. A box whose face area the edit filled solidly
        #    holds no identity and is not embedded (dlib's descriptor of a flat patch is
        #    meaningless and can fall close to anything).
        embedder = self.embedder
        alignments = [embedder.align(original, box, points, refine=self._refine_upright) for box, points in faces]
        original_vecs = embedder.embed_aligned(original, alignments)
        flat_same = [_flat(edited, box) for box, _ in faces]
        same_vecs = embedder.embed_aligned(edited, [a for a, flat in zip(alignments, flat_same) if not flat])
        same_iter = iter(same_vecs)
        same_box_vecs = [None if flat else next(same_iter) for flat in flat_same]
        edited_faces = [face for face in self.faces.detect(edited) if not _flat(edited, face.bbox)]
        edited_vecs = embedder.embed_aligned(edited, [embedder.align(edited, face.bbox, face.landmarks,
                                                                     refine=self._refine_upright)
                                                      for face in edited_faces])
        edited_boxes = [face.bbox for face in edited_faces]
        checks["edited_faces"] = len(edited_boxes)
        checks["faces_filled"] = int(sum(flat_same))
        # 3. Best match of each original face.
        leaks, overall_min = [], float("inf")
        threshold = float(getattr(embedder, "same_identity_distance", self.config.face_distance_threshold))
        for (box, _), vec, same_box_vec in zip(faces, original_vecs, same_box_vecs):
            # A solidly filled box shows no face: it stands at FILLED_DISTANCE, beyond any threshold.
            best, best_box, best_vec = FILLED_DISTANCE, box, None
            if same_box_vec is not None:
                best, best_vec = distance(vec, same_box_vec), same_box_vec
            for edited_box, edited_vec in zip(edited_boxes, edited_vecs):
                dist = distance(vec, edited_vec)
                if dist < best:
                    best, best_box, best_vec = dist, edited_box, edited_vec
            overall_min = min(overall_min, best)
            if best_vec is not None and embedder.same_identity(vec, best_vec):
                leaks.append(Leak(category=FACE_CATEGORY, bbox=box, kind="face_identity",
                                  detail={"distance": round(best, 4), "threshold": threshold,
                                          "matched_bbox": best_box}))
        checks["min_face_distance"] = round(overall_min, 4) if np.isfinite(overall_min) else None
        return leaks

    def _refine_upright(self, crop: np.ndarray, box: list[int]) -> list[int] | None:
        """The detector's box of the face in an upright crop (sharper than the turned box of
        a sideways detection); None when it finds none there."""
        from unsafe2safe_ray.detectors.geometry import box_iou_many

        found = self.faces.detect(crop)
        if not found:
            return None
        ious = box_iou_many(box, [face.bbox for face in found])
        best = int(np.argmax(ious))
        return found[best].bbox if ious[best] > 0.3 else None

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
            # The edited box is read in every orientation (a rotated or stacked string that
            # still reads is a leak); the closest reading counts.
            similarity = max((text_similarity(before, text) for text, score in self.ocr.readings(edited, box)
                              if score >= self.ocr.score_threshold), default=0.0)
            max_similarity = max(max_similarity, similarity)
            if similarity >= threshold:
                leaks.append(Leak(category=TEXT_CATEGORY, bbox=box, kind="readable_text",
                                  detail={"similarity": round(similarity, 4), "threshold": threshold}))
        checks["text_checked"] = checked
        checks["max_text_similarity"] = round(max_similarity, 4) if checked else None
        return leaks


# The distance a solidly filled face box counts as in ``min_face_distance`` (it is not embedded).
FILLED_DISTANCE = 1.0
# A box whose central part varies less than this (grey-level standard deviation, per channel)
# was filled solidly: nothing in it can identify anyone.
_FLAT_STD = 4.0


def _flat(image: np.ndarray, box) -> bool:
    """Whether the central part of ``box`` (the face: the middle 60 % each way) is (near-)
    constant, as after a solid fill."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    core = image[max(0, y0 + int(0.2 * h)) : max(0, y1 - int(0.2 * h)), max(0, x0 + int(0.2 * w)) : max(0, x1 - int(0.2 * w))]
    if core.size == 0:
        return True
    return bool(core.reshape(-1, core.shape[-1] if core.ndim == 3 else 1).std(axis=0).max() < _FLAT_STD)


def leak_summary(leaks: list[Leak]) -> str:
    """One line naming each leak's check, kind, measured score and threshold, and box, for
    error messages and logs (from ``leak_record``: numbers and boxes only, never text)."""
    parts = []
    for leak in leaks:
        record = leak_record(leak)
        check = {"face_identity": "faces", "readable_text": "text", "unchanged_pixels": "changed"}.get(leak.kind, leak.kind)
        if "distance" in record:
            score = f"distance {record['distance']:.3f} < {record.get('threshold', 0.6):g}"
        elif "similarity" in record:
            score = f"similarity {record['similarity']:.3f} >= {record.get('threshold', 0.5):g}"
        else:
            score = "pixels unchanged"
        where = f" at {[int(v) for v in record['bbox']]}" if record.get("bbox") else ""
        parts.append(f"{check} check: {record['category'] or 'image'}/{record['kind']} {score}{where}")
    return "; ".join(parts)
