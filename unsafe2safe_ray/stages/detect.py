"""``detect``: shipped-weight detectors (CenterFace faces over an image pyramid, rapidocr text in
every right-angle orientation, plates from OCR and from shape and texture) and templated captions.

Each detection becomes a region ``{category, bbox, score, text?, source, kind}``; a row is
flagged when any region is found. The captions are templates filled from the detections and are
labelled as such (``caption_source = "detector-template"``): the private caption lists what was
found including the recognized text, the public caption leaves text and identities out, and the
edit instruction says what the classic editor will change. Nothing private is logged.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.stages.base import Stage

CAPTION_SOURCE = "detector-template"
PROMPT_VERSION = "detector-template-1"
FACE = "people"
TEXT = "text_and_symbols"
# Recognized text in the private caption is cut here; the full strings stay in ``regions``.
_MAX_CAPTION_TEXT = 300
_METHOD_VERBS = {"blur": "blur", "pixelate": "pixelate", "fill": "cover with a solid fill", "inpaint": "inpaint over"}


class DetectStage(Stage):
    """Finds faces, text and licence plates; fills the flag, regions and the caption triplet."""

    name = "detect"

    def setup(self) -> None:
        """Load CenterFace and rapidocr once per actor, with threads bounded by the actor's CPUs."""
        import cv2

        from unsafe2safe_ray.detectors.faces import FaceDetector, threads_for
        from unsafe2safe_ray.detectors.text import TextDetector

        cfg = self.config.detect
        threads = threads_for(cfg)
        cv2.setNumThreads(threads)
        self.faces = None
        self.ocr = None
        if cfg.faces:
            self.faces = FaceDetector(threads=threads, **cfg.face_detector_kwargs())
        if cfg.text or cfg.plates:
            self.ocr = TextDetector(threads=threads, score_threshold=cfg.text_score_threshold,
                                    min_alnum=cfg.text_min_chars)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Detect on every live row (the adapter only passes live rows)."""
        if not hasattr(self, "faces"):
            self.setup()
        for row in rows:
            image = records.get_image(row)
            if image is None:
                records.fail(row, "detect: row has no pixels")
                continue
            regions = self.find_regions(image)
            fill_detection_columns(row, regions, self.config)
        return rows

    def find_regions(self, image) -> list[dict]:
        """All regions of one RGB image: faces first, then plates, then other text. Plates
        found by shape and texture (unread) are added where no OCR line already lies."""
        from unsafe2safe_ray.detectors.geometry import box_intersection_many
        from unsafe2safe_ray.detectors.plates import find_plate_shapes, looks_like_plate

        cfg = self.config.detect
        regions: list[dict] = []
        if self.faces is not None:
            for face in self.faces.detect(image):
                regions.append({"category": FACE, "bbox": face.bbox, "score": round(face.score, 4),
                                "source": "detector", "kind": "face"})
        if self.ocr is not None:
            lines, text_boxes = self.ocr.read_with_boxes(image)
            read_boxes = []
            for line in lines:
                read_boxes.append(line.bbox)
                is_plate = cfg.plates and looks_like_plate(line)
                if not is_plate and not cfg.text:
                    continue
                regions.append({"category": TEXT, "bbox": line.bbox, "score": round(line.score, 4),
                                "text": line.text, "source": "detector",
                                "kind": "licence_plate" if is_plate else "text"})
            if cfg.plates and cfg.plate_shapes:
                for plate in find_plate_shapes(image, text_boxes):
                    if read_boxes and _mostly_covered(plate.bbox, read_boxes, box_intersection_many):
                        continue  # an OCR line already covers it (a read plate, or ordinary text)
                    regions.append({"category": TEXT, "bbox": plate.bbox, "score": round(plate.score, 4),
                                    "source": "detector", "kind": "licence_plate"})
        return regions


def _mostly_covered(box: list[int], others: list[list[int]], intersection) -> bool:
    """Whether ``box`` and one of ``others`` overlap by half of the smaller of the two."""
    import numpy as np

    others_arr = np.asarray(others, dtype=np.float64)
    inter = intersection(box, others_arr)
    area = max(1.0, float((box[2] - box[0]) * (box[3] - box[1])))
    areas = np.maximum(1.0, (others_arr[:, 2] - others_arr[:, 0]) * (others_arr[:, 3] - others_arr[:, 1]))
    return bool((inter >= 0.5 * np.minimum(area, areas)).any())


def fill_detection_columns(row: dict[str, Any], regions: list[dict], config) -> dict[str, Any]:
    """Write the flag, categories, regions and the templated caption triplet into ``row``."""
    categories = [c for c in records.CATEGORIES if any(r["category"] == c for r in regions)]
    row["privacy_flag"] = bool(regions)
    row["flagged_by"] = "detector" if regions else ""
    row["categories"] = categories
    row["regions"] = regions
    row["caption_source"] = CAPTION_SOURCE
    row["prompt_version"] = PROMPT_VERSION
    counts = _counts(regions)
    subject = _subject(row.get("label"))
    row["private_caption"] = _private_caption(subject, counts, regions)
    row["public_caption"] = _public_caption(subject, counts)
    row["edit_instruction"] = _edit_instruction(counts, config)
    row["privacy_review"] = [f"{item['visible']}: {item['why']}" for item in _review(counts)]
    return row


def _counts(regions: list[dict]) -> dict[str, int]:
    counts = {"face": 0, "licence_plate": 0, "text": 0}
    for region in regions:
        kind = region.get("kind") or ("face" if region["category"] == FACE else "text")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _subject(label: str | None) -> str:
    if label:
        article = "an" if label[:1].lower() in "aeiou" else "a"
        return f"A photo of {article} {label}"
    return "A photo"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _quoted(texts: list[str]) -> str:
    joined = "; ".join(f'"{t}"' for t in texts)
    return joined if len(joined) <= _MAX_CAPTION_TEXT else joined[: _MAX_CAPTION_TEXT - 3] + "..."


def _private_caption(subject: str, counts: dict[str, int], regions: list[dict]) -> str:
    """What was found, recognized text included (private table only)."""
    if not regions:
        return f"{subject}; no faces, text or licence plates were detected."
    parts = []
    if counts["face"]:
        parts.append(f"{_plural(counts['face'], 'visible face')}")
    plates = [r for r in regions if r.get("kind") == "licence_plate"]
    read = [r["text"] for r in plates if r.get("text")]
    if read:
        parts.append(f"{_plural(len(read), 'licence plate')} reading {_quoted(read)}")
    if len(plates) > len(read):
        parts.append(f"{_plural(len(plates) - len(read), 'unreadable licence plate')}")
    texts = [r["text"] for r in regions if r.get("kind") == "text" and r.get("text")]
    if texts:
        parts.append(f"{_plural(len(texts), 'line')} of text reading {_quoted(texts)}")
    return f"{subject} with " + ", ".join(parts) + "."


def _public_caption(subject: str, counts: dict[str, int]) -> str:
    """The same scene without identities or text content."""
    parts = []
    if counts["face"]:
        people = "one person" if counts["face"] == 1 else f"{counts['face']} people"
        parts.append(f"{people} whose face{'s are' if counts['face'] > 1 else ' is'} not identifiable")
    if counts["licence_plate"]:
        parts.append("a vehicle licence plate that cannot be read")
    if counts["text"]:
        parts.append("some text that cannot be read")
    if not parts:
        return f"{subject}."
    return f"{subject} with " + " and ".join(parts) + "."


def _edit_instruction(counts: dict[str, int], config) -> str:
    """What the classic editor will change, with the configured method per category."""
    methods = config.classic.methods
    default = config.classic.default_method
    face_verb = _METHOD_VERBS[methods.get(FACE, default)]
    text_verb = _METHOD_VERBS[methods.get(TEXT, default)]
    steps = []
    if counts["face"]:
        steps.append(f"{face_verb} {'the face' if counts['face'] == 1 else 'all ' + str(counts['face']) + ' faces'}")
    if counts["licence_plate"]:
        steps.append(f"{text_verb} the licence plate{'s' if counts['licence_plate'] > 1 else ''}")
    if counts["text"]:
        steps.append(f"{text_verb} {_plural(counts['text'], 'text region')}")
    if not steps:
        return ""
    sentence = "; ".join(steps)
    return sentence[0].upper() + sentence[1:] + "; leave everything else unchanged."


def _review(counts: dict[str, int]) -> list[dict[str, str]]:
    """The privacy review: what is visible and why it is sensitive (no text content)."""
    review = []
    if counts["face"]:
        review.append({"visible": _plural(counts["face"], "face"),
                       "why": "a face identifies a person"})
    if counts["licence_plate"]:
        review.append({"visible": _plural(counts["licence_plate"], "licence plate"),
                       "why": "a plate number identifies a vehicle and its owner"})
    if counts["text"]:
        review.append({"visible": _plural(counts["text"], "line") + " of readable text",
                       "why": "text can carry names, addresses, numbers or other personal data"})
    return review
