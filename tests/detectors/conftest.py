"""Real detectors, loaded once per test session (each load costs 0.1-0.7 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


def load_example(name: str) -> np.ndarray:
    """An example image as HxWx3 uint8 RGB."""
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


@pytest.fixture(scope="session")
def face_detector():
    from unsafe2safe_ray.detectors.faces import FaceDetector

    return FaceDetector(threads=1)


@pytest.fixture(scope="session")
def text_detector():
    from unsafe2safe_ray.detectors.text import TextDetector

    return TextDetector(threads=1)


@pytest.fixture(scope="session")
def verifier():
    from unsafe2safe_ray.config import VerifyConfig
    from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

    v = PrivacyVerifier(VerifyConfig(threads=1))
    v.warm_up()
    return v
