"""Text detection and recognition with rapidocr (PP-OCR det + rec ONNX models from its wheel).

Boxes and recognized strings are both kept: the boxes drive the edit, the strings go to the
private caption and to the verifier. rapidocr logs INFO lines on start-up and per call; they are
silenced here because recognized text is private and must never reach an INFO log.

Orientation. rapidocr's detector finds lines at any angle and turns tall line crops by a quarter
turn; a line read with doubt is read again turned the other ways (``use_angle_cls``, on by
default), only where the detector found text, so text at 0, 90, 180 and 270 degrees is read. Characters stacked one per line (a
vertical sign) come back as separate short readings: they are joined into one column before the
minimum-length rule, which judges the whole column, not one character. ``read_box`` (the
verifier's and the evaluation's re-reading of a known box) tries every orientation of the crop
and keeps the most confident reading, so a rotated string still counts as readable.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

# Strings with fewer alphanumerics than this are mostly texture noise (a "0" on a cat's fur).
_MIN_ALNUM = 2
# Readings below _SURE are re-read in the other orientations (an upside-down line reads as
# confident-looking garbage at 0.6-0.75); below _REREAD_FLOOR they are texture noise (faces,
# foliage), not worth the recognizer calls.
_SURE = 0.9
_REREAD_FLOOR = 0.5


@dataclass
class TextLine:
    """One recognized line: axis-aligned ``bbox`` [x0, y0, x1, y1], the ``text`` and the
    recognizer's confidence ``score``."""

    bbox: list[int]
    text: str
    score: float


def normalize_text(text: str | None, keep_spaces: bool = False) -> str:
    """The one form in which readings are compared: lower-case alphanumeric words.

    Punctuation, underscores and layout are dropped. By default the words are joined without
    spaces ("KX 482-TB" -> "kx482tb"), the form of the verifier's similarity; ``keep_spaces``
    separates them by one space ("kx 482 tb"), for token-based metrics.
    """
    words = re.findall(r"[^\W_]+", (text or "").lower())
    return " ".join(words) if keep_spaces else "".join(words)


def text_similarity(a: str | None, b: str | None) -> float:
    """Normalized similarity (0..1) of two readings, compared as ``normalize_text`` forms.

    Uses the plain Indel ratio, not a token-set ratio: a token-set ratio is 1.0 whenever one
    word set contains the other, so a single surviving word would read as the whole text.
    """
    from rapidfuzz import fuzz

    a, b = normalize_text(a), normalize_text(b)
    if not a or not b:
        return 0.0
    return fuzz.ratio(a, b) / 100.0


# rapidocr's detector scales the longer side to 736 px on a 32 px grid: a strip whose shorter
# side would round to nothing fails ("ResizeImgError"). Pad it (white, bottom and right, so the
# boxes keep their coordinates) to at least this fraction of the longer side, and 32 px.
_MIN_SHORT_SIDE_RATIO = 1 / 20


def _detector_input(image: np.ndarray) -> np.ndarray:
    """``image`` as the text detector can take it: strips and tiny images padded white."""
    height, width = image.shape[:2]
    need = max(32, int(np.ceil(max(height, width) * _MIN_SHORT_SIDE_RATIO)))
    if height >= need and width >= need:
        return np.ascontiguousarray(image)
    padded = np.full((max(height, need), max(width, need), 3), 255, dtype=np.uint8)
    padded[:height, :width] = image
    return padded


def _quad_box(quad, height: int, width: int) -> list[int] | None:
    """A detector quadrilateral as an axis-aligned box clipped to the ``height`` x ``width``
    image (None when nothing of it is inside)."""
    quad = np.asarray(quad, dtype=np.float32)
    box = [int(np.clip(np.floor(quad[:, 0].min()), 0, width)), int(np.clip(np.floor(quad[:, 1].min()), 0, height)),
           int(np.clip(np.ceil(quad[:, 0].max()), 0, width)), int(np.clip(np.ceil(quad[:, 1].max()), 0, height))]
    return box if box[2] > box[0] and box[3] > box[1] else None


def _silence_rapidocr() -> None:
    """Raise rapidocr's loggers to ERROR: it logs INFO at start-up and a WARNING per image
    without text, which would flood the logs of a large run."""
    for name in list(logging.root.manager.loggerDict):
        if name.lower().startswith("rapidocr"):
            logging.getLogger(name).setLevel(logging.ERROR)


class TextDetector:
    """rapidocr with bounded threads; ``read(image)`` returns ``TextLine`` objects.

    ``score_threshold`` drops low-confidence readings; ``min_alnum`` drops strings that are
    too short to carry information (judged on whole lines and on columns of stacked characters).
    ``use_angle_cls`` enables the orientation re-reads: a doubtful line is read again turned by
    a half turn (wide boxes) or a quarter turn each way (tall boxes), where text was found only.
    (rapidocr's own 180-degree classifier is not used in ``read``: it turns correctly read
    lines of a page upside down now and then.)
    """

    def __init__(
        self,
        threads: int = 1,
        score_threshold: float = 0.6,
        min_alnum: int = _MIN_ALNUM,
        use_angle_cls: bool = True,
    ) -> None:
        from rapidocr import RapidOCR

        threads = max(1, int(threads))
        self.score_threshold = score_threshold
        self.min_alnum = min_alnum
        self.use_angle_cls = use_angle_cls
        self.engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                "Global.use_cls": False,
                # Every reading comes back; score_threshold filters here (rapidocr's own 0.5
                # would silently override a lower threshold, e.g. the verifier's).
                "Global.text_score": 0.0,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        _silence_rapidocr()

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Text lines in an RGB uint8 image, in reading order as rapidocr returns them; columns
        of stacked characters are joined into one line each."""
        return self.read_with_boxes(image)[0]

    def read_with_boxes(self, image: np.ndarray) -> tuple[list[TextLine], list[list[int]]]:
        """``read``'s lines, and the boxes of every line the detector found, readable or not
        (one detection pass serves both; the plate detector uses the boxes)."""
        raw = self._read_raw(image, use_cls=False)
        boxes = [list(line.bbox) for line in raw]
        if self.use_angle_cls:
            for line in raw:
                if _REREAD_FLOOR <= line.score < _SURE:
                    self._reorient(image, line)
        lines = join_stacked([line for line in raw if line.score >= self.score_threshold])
        for line in lines:
            if line.score < _SURE and line.bbox[3] - line.bbox[1] >= 1.5 * (line.bbox[2] - line.bbox[0]):
                self._reorient(image, line)  # a joined column: read it whole
        return [line for line in lines if len(normalize_text(line.text)) >= self.min_alnum], boxes

    def _reorient(self, image: np.ndarray, line: TextLine) -> None:
        """Re-read a doubtful line turned by a half turn (a wide box) or a quarter turn each way
        (a tall box: a rotated line or a column of stacked characters), and keep the most
        confident reading that is not much shorter."""
        x0, y0, x1, y1 = line.bbox
        crop = image[y0:y1, x0:x1]
        if crop.size == 0 or min(crop.shape[:2]) < 2:
            return
        h, w = crop.shape[:2]
        if w >= 1.5 * h:
            views = [np.rot90(crop, 2)]
        elif h >= 1.5 * w:
            views = [np.rot90(crop, 1), np.rot90(crop, -1)]
        else:
            views = [np.rot90(crop, 2), np.rot90(crop, 1), np.rot90(crop, -1)]
        for view in views:
            text, score = self.recognize(view, use_cls=False)
            if score > line.score and len(normalize_text(text)) >= len(normalize_text(line.text)) // 2:
                line.text, line.score = text, score

    def _read_raw(self, image: np.ndarray, use_cls: bool | None = None) -> list[TextLine]:
        """Every line rapidocr reads (no score or length filter)."""
        use_cls = self.use_angle_cls if use_cls is None else use_cls
        # rapidocr remembers the use_* flags of the previous call, so pass all of them.
        result = self.engine(_detector_input(image), use_det=True, use_cls=use_cls, use_rec=True)
        if result is None or getattr(result, "boxes", None) is None or result.txts is None:
            return []
        height, width = image.shape[:2]
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores):
            bbox = _quad_box(quad, height, width)
            if bbox is not None:
                lines.append(TextLine(bbox=bbox, text=str(text).strip(), score=float(score)))
        return lines

    def boxes(self, image: np.ndarray) -> list[list[int]]:
        """The text detector's line boxes alone (no recognition): where text-like texture is,
        readable or not (used by the plate detector)."""
        result = self.engine(_detector_input(image), use_det=True, use_cls=False, use_rec=False)
        if result is None or getattr(result, "boxes", None) is None:
            return []
        height, width = image.shape[:2]
        return [box for box in (_quad_box(quad, height, width) for quad in result.boxes) if box is not None]

    def read_text(self, image: np.ndarray) -> str:
        """All recognized lines of ``image`` joined by newlines ('' when there is no text)."""
        return "\n".join(line.text for line in self.read(image))

    def recognize(self, crop: np.ndarray, use_cls: bool | None = None) -> tuple[str, float]:
        """Read ``crop`` as one text line (recognizer only, no detection); returns the string
        and its confidence. Used on a known line box: a detector may no longer find a blurred
        line that the recognizer can still read."""
        if crop.size == 0 or min(crop.shape[:2]) < 2:
            return "", 0.0
        use_cls = self.use_angle_cls if use_cls is None else use_cls
        result = self.engine(np.ascontiguousarray(crop), use_det=False, use_cls=use_cls, use_rec=True)
        if result is None or not getattr(result, "txts", None):
            return "", 0.0
        return str(result.txts[0]).strip(), float(result.scores[0])

    def readings(self, image: np.ndarray, bbox: list[int], margin: float = 0.0) -> list[tuple[str, float]]:
        """Every reading of the text inside ``bbox`` (grown by ``margin``, a fraction of its
        size), in every orientation: the crop as one line and a quarter turn each way (a rotated
        line, a column of stacked characters), each with and without the angle classifier, or,
        for a box that is not one line, detection inside the crop. Returns (text, confidence)
        pairs; empty readings are left out."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in bbox)
        pad_x, pad_y = int((x1 - x0) * margin), int((y1 - y0) * margin)
        crop = image[max(0, y0 - pad_y) : min(height, y1 + pad_y), max(0, x0 - pad_x) : min(width, x1 + pad_x)]
        if crop.size == 0 or min(crop.shape[:2]) < 2:
            return []
        out: list[tuple[str, float]] = []
        h, w = crop.shape[:2]
        if w >= 1.5 * h:
            views = [crop]
        elif h >= 1.5 * w:
            views = [np.rot90(crop, 1), np.rot90(crop, -1)]
        else:
            views = []
        for view in views:
            for use_cls in (False, True):
                text, score = self.recognize(view, use_cls=use_cls)
                out.append((text, score))
        if not views:
            # A block (a VLM's paragraph region): find its lines first. Not for one-line crops:
            # the detector scales a crop's shorter side up to 736 px, which makes a long thin
            # crop enormous.
            lines = join_stacked(self._read_raw(crop))
            if lines:
                out.append((" ".join(line.text for line in lines), min(line.score for line in lines)))
        return [(t, s) for t, s in out if normalize_text(t)]

    def read_box(self, image: np.ndarray, bbox: list[int], margin: float = 0.0) -> str:
        """The most confident reading of the text inside ``bbox`` grown by ``margin`` (fraction
        of its size), over every orientation (see ``readings``); '' when nothing is read at or
        above ``score_threshold``."""
        best = max(((s, t) for t, s in self.readings(image, bbox, margin) if s >= self.score_threshold), default=None)
        return best[1] if best else ""


def join_stacked(lines: list[TextLine]) -> list[TextLine]:
    """Join readings stacked one above the other in a column (characters written one per line)
    into one line each, top to bottom. Only boxes that are not wider than tall take part, so
    the lines of an ordinary paragraph stay as they are."""
    narrow = [i for i, line in enumerate(lines)
              if (line.bbox[2] - line.bbox[0]) <= 1.5 * (line.bbox[3] - line.bbox[1])]
    if len(narrow) < 2:
        return lines
    parent = {i: i for i in narrow}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a_pos, a in enumerate(narrow):
        ax0, ay0, ax1, ay1 = lines[a].bbox
        for b in narrow[a_pos + 1:]:
            bx0, by0, bx1, by1 = lines[b].bbox
            overlap = min(ax1, bx1) - max(ax0, bx0)
            narrower = min(ax1 - ax0, bx1 - bx0)
            gap = max(by0 - ay1, ay0 - by1)
            char = min(ax1 - ax0, bx1 - bx0, ay1 - ay0, by1 - by0)
            if overlap >= 0.5 * narrower and gap <= max(2, 0.8 * char):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in narrow:
        groups.setdefault(root(i), []).append(i)
    joined, used = [], set()
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: lines[i].bbox[1])
        used.update(members)
        boxes = np.array([lines[i].bbox for i in members])
        joined.append((members[0], TextLine(
            bbox=[int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())],
            text="".join(lines[i].text for i in members), score=min(lines[i].score for i in members))))
    first = {pos: line for pos, line in joined}
    out = []
    for i, line in enumerate(lines):
        if i in first:
            out.append(first[i])
        elif i not in used:
            out.append(line)
    return out
