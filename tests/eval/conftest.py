"""Fixtures for the evaluation tests: constructed image pairs with known answers."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def page_rgb() -> np.ndarray:
    from skimage import data

    return np.repeat(data.page()[:, :, None], 3, axis=2)


@pytest.fixture(scope="session")
def face_comparer():
    from unsafe2safe_ray.eval.privacy import CenterFaceDetector, FaceComparer, load_face_embedder

    return FaceComparer(CenterFaceDetector(), load_face_embedder("dlib"))


@pytest.fixture(scope="session")
def text_reader():
    from unsafe2safe_ray.eval.privacy import TextReader

    return TextReader()
