"""Constructed test cases shared by the evaluation tests (imported by module name)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# The astronaut's face as CenterFace finds it in skimage.data.astronaut() (x0, y0, x1, y1),
# padded so that a fill covers the whole detection.
ASTRONAUT_FACE = (165, 45, 285, 195)



def fill_box(image: np.ndarray, box: tuple[int, int, int, int], value: int = 128) -> np.ndarray:
    """A copy of ``image`` with ``box`` filled by a flat grey (the classic 'fill' anonymizer)."""
    out = image.copy()
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = value
    return out


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


