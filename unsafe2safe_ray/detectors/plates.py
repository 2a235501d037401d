"""Licence plates, recognised from OCR lines: a plate is a short upper-case alphanumeric string,
with letters and digits, in a wide box.

No plate detector with redistributable weights ships in a wheel, so plates are found by what
they say and how they are shaped. That catches readable plates, which are the ones that leak;
a plate too small or blurred to read is not an identifier in the first place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unsafe2safe_ray.detectors.text import TextLine

# What a plate may print: upper-case letters, digits and the separators plates use.
_PLATE_CHARS = re.compile(r"^[A-Z0-9][A-Z0-9 \-.·:]*[A-Z0-9]$")


@dataclass(frozen=True)
class PlateRules:
    """Shape of a plate reading: ``min_chars``..``max_chars`` alphanumerics (separators not
    counted), at least ``min_letters`` letters and ``min_digits`` digits, box width/height in
    ``min_aspect``..``max_aspect``, at most ``max_groups`` space-separated groups.

    Two letters and two digits: nearly every plate format has both, while card and serial
    numbers (one letter and many digits) and upper-case words do not.
    """

    min_chars: int = 4
    min_letters: int = 2
    min_digits: int = 2
    max_chars: int = 10
    min_aspect: float = 1.5
    max_aspect: float = 12.0
    max_groups: int = 3


def looks_like_plate(line: TextLine, rules: PlateRules = PlateRules()) -> bool:
    """Whether an OCR line reads like a licence plate (see ``PlateRules``)."""
    text = line.text.strip()
    if not _PLATE_CHARS.match(text):
        return False
    chars = re.sub(r"[^A-Z0-9]", "", text)
    if not rules.min_chars <= len(chars) <= rules.max_chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    if letters < rules.min_letters or len(chars) - letters < rules.min_digits:
        return False
    if len(text.split()) > rules.max_groups:
        return False
    x0, y0, x1, y1 = line.bbox
    aspect = (x1 - x0) / max(1, y1 - y0)
    return rules.min_aspect <= aspect <= rules.max_aspect


def find_plates(lines: list[TextLine], rules: PlateRules = PlateRules()) -> list[TextLine]:
    """The OCR lines that read like licence plates."""
    return [line for line in lines if looks_like_plate(line, rules)]
