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
    from unsafe2safe_ray.detectors.identity import load_identity_embedder
    from unsafe2safe_ray.eval.options import EvalOptions
    from unsafe2safe_ray.eval.privacy import FaceComparer

    # The evaluation reads faces with the verifier's own detector (same threshold).
    return FaceComparer(EvalOptions().verifier().faces, load_identity_embedder("dlib"))


@pytest.fixture(scope="session")
def text_reader():
    from unsafe2safe_ray.eval.options import EvalOptions

    return EvalOptions().verifier().ocr
