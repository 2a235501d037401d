"""Text detection and recognition with rapidocr (PP-OCR det + rec ONNX models from its wheel).

Boxes and recognized strings are both kept: the boxes drive the edit, the strings go to the
private caption and to the verifier. rapidocr logs INFO lines on start-up and per call; they are
silenced here because recognized text is private and must never reach an INFO log.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

# Strings with fewer alphanumerics than this are mostly texture noise (a "0" on a cat's fur).
_MIN_ALNUM = 2


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


def _silence_rapidocr() -> None:
    """Raise rapidocr's loggers to ERROR: it logs INFO at start-up and a WARNING per image
    without text, which would flood the logs of a large run."""
    for name in list(logging.root.manager.loggerDict):
        if name.lower().startswith("rapidocr"):
            logging.getLogger(name).setLevel(logging.ERROR)


class TextDetector:
    """rapidocr with bounded threads; ``read(image)`` returns ``TextLine`` objects.

    ``score_threshold`` drops low-confidence readings; ``min_alnum`` drops strings that are
    too short to carry information. ``use_angle_cls`` enables the 180-degree line classifier.
    """

    def __init__(
        self,
        threads: int = 1,
        score_threshold: float = 0.6,
        min_alnum: int = _MIN_ALNUM,
        use_angle_cls: bool = False,
    ) -> None:
        from rapidocr import RapidOCR

        threads = max(1, int(threads))
        self.score_threshold = score_threshold
        self.min_alnum = min_alnum
        self.use_angle_cls = use_angle_cls
        self.engine = RapidOCR(
            params={
                "Global.log_level": "warning",
                "Global.use_cls": use_angle_cls,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        _silence_rapidocr()

    def read(self, image: np.ndarray) -> list[TextLine]:
        """Text lines in an RGB uint8 image, in reading order as rapidocr returns them."""
        # rapidocr remembers the use_* flags of the previous call, so pass all of them.
        result = self.engine(np.ascontiguousarray(image), use_det=True, use_cls=self.use_angle_cls, use_rec=True)
        if result is None or getattr(result, "boxes", None) is None or result.txts is None:
            return []
        height, width = image.shape[:2]
        lines = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores):
            if score < self.score_threshold or len(normalize_text(text)) < self.min_alnum:
                continue
            quad = np.asarray(quad, dtype=np.float32)
            bbox = [
                int(np.clip(np.floor(quad[:, 0].min()), 0, width)),
                int(np.clip(np.floor(quad[:, 1].min()), 0, height)),
                int(np.clip(np.ceil(quad[:, 0].max()), 0, width)),
                int(np.clip(np.ceil(quad[:, 1].max()), 0, height)),
            ]
            if bbox[2] > bbox[0] and bbox[3] > bbox[1]:
                lines.append(TextLine(bbox=bbox, text=text.strip(), score=float(score)))
        return lines

    def read_text(self, image: np.ndarray) -> str:
        """All recognized lines of ``image`` joined by newlines ('' when there is no text)."""
        return "\n".join(line.text for line in self.read(image))

    def recognize(self, crop: np.ndarray) -> tuple[str, float]:
        """Read ``crop`` as one text line (recognizer only, no detection); returns the string
        and its confidence. Used on a known line box: a detector may no longer find a blurred
        line that the recognizer can still read."""
        if crop.size == 0 or min(crop.shape[:2]) < 2:
            return "", 0.0
        result = self.engine(np.ascontiguousarray(crop), use_det=False, use_cls=False, use_rec=True)
        if result is None or not getattr(result, "txts", None):
            return "", 0.0
        return str(result.txts[0]).strip(), float(result.scores[0])

    def read_box(self, image: np.ndarray, bbox: list[int], margin: float = 0.0) -> str:
        """All text readable inside ``bbox`` grown by ``margin`` (fraction of its size).

        A box as high as a single line is read by the recognizer alone; a taller box (a whole
        paragraph from a VLM region) goes through detection first.
        """
        height, width = image.shape[:2]
        x0, y0, x1, y1 = (int(v) for v in bbox)
        pad_x, pad_y = int((x1 - x0) * margin), int((y1 - y0) * margin)
        crop = image[max(0, y0 - pad_y) : min(height, y1 + pad_y), max(0, x0 - pad_x) : min(width, x1 + pad_x)]
        if crop.size == 0:
            return ""
        if crop.shape[1] >= 1.5 * crop.shape[0]:
            text, _score = self.recognize(crop)
            return text
        return " ".join(line.text for line in self.read(crop))
