"""Classic obscuring: every method changes the inside of a region and nothing outside it."""

from __future__ import annotations

import numpy as np
import pytest

from unsafe2safe_ray.editors.base import EditRequest
from unsafe2safe_ray.editors.classic import (
    METHODS,
    ClassicEditor,
    ObscureSettings,
    dilate_bbox,
    obscure_mask,
    obscure_regions,
)


@pytest.fixture()
def noise():
    # Random texture: any method that touches a pixel changes it (almost surely).
    return np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)


def _outside(shape, boxes):
    keep = np.ones(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        keep[y0:y1, x0:x1] = False
    return keep


@pytest.mark.parametrize("method", METHODS)
def test_region_mask_leaves_outside_pixels_identical(noise, method):
    regions = [{"category": "text_and_symbols", "bbox": [40, 30, 140, 70]},
               {"category": "people", "bbox": [200, 100, 260, 180]}]
    out = obscure_regions(noise, regions, method, dilation=0.1)
    # Expected dilated boxes, computed by hand: 10 % of the size plus 2 px on every side.
    dilated = [[28, 24, 152, 76], [192, 90, 268, 190]]
    assert [dilate_bbox(r["bbox"], noise.shape[:2], 0.1, 2) for r in regions] == dilated
    outside = _outside(noise.shape[:2], dilated)
    assert np.array_equal(out[outside], noise[outside])
    # Inside, the texture is gone: most pixels changed, and the variance collapsed.
    inside_text = (slice(30, 70), slice(40, 140))
    assert (out[inside_text] != noise[inside_text]).any(axis=-1).mean() > 0.9
    assert out[inside_text].std() < 0.6 * noise[inside_text].std()
    assert out.dtype == np.uint8 and out.shape == noise.shape


def test_faces_are_ellipses_and_the_mask_says_exactly_what_changed(noise):
    regions = [{"category": "people", "bbox": [100, 60, 200, 180]}]
    out = obscure_regions(noise, regions, "fill")
    mask = obscure_mask(noise.shape[:2], regions)
    changed = (out != noise).any(axis=-1)
    assert not changed[~mask].any()
    assert changed[mask].mean() > 0.99
    # The corners of the dilated box stay untouched (ellipse), its centre is filled.
    x0, y0, x1, y1 = dilate_bbox(regions[0]["bbox"], noise.shape[:2], 0.1, 2)
    assert not changed[y0, x0] and not changed[y1 - 1, x1 - 1]
    assert changed[120, 150]


def test_per_category_methods_and_solid_fill_colour(noise):
    settings = ObscureSettings(methods={"text_and_symbols": "fill"}, default_method="blur",
                               fill_color=(0, 255, 0), dilation=0.0, dilation_px=0)
    out = obscure_regions(noise, [{"category": "text_and_symbols", "bbox": [10, 10, 50, 30]},
                                  {"category": "people", "bbox": [100, 100, 150, 160]}], settings=settings)
    assert (out[10:30, 10:50] == (0, 255, 0)).all()
    assert not (out[125, 120:130] == (0, 255, 0)).all(axis=-1).any()  # blurred, not filled


def test_regions_at_the_border_and_degenerate_boxes(noise):
    out = obscure_regions(noise, [{"category": "people", "bbox": [300, 220, 400, 300]},
                                  {"category": "people", "bbox": [10, 10, 10, 40]},
                                  {"category": "people"}], "blur")
    assert out.shape == noise.shape
    # A zero-width box still covers its dilation (conservative); a box without bbox is skipped.
    assert not np.array_equal(out[5:45, 8:12], noise[5:45, 8:12])
    assert np.array_equal(out[50:200, :280], noise[50:200, :280])
    assert not np.array_equal(out[215:, 290:], noise[215:, 290:])


def test_large_regions_blur_through_the_shrunken_path():
    image = np.random.default_rng(1).integers(0, 256, size=(1200, 1600, 3), dtype=np.uint8)
    out = obscure_regions(image, [{"category": "text_and_symbols", "bbox": [100, 100, 1500, 1100]}], "blur")
    assert out[200:1000, 200:1400].std() < 10  # noise averaged away


def test_classic_editor_interface_and_strength(noise):
    editor = ClassicEditor(ObscureSettings(default_method="blur"))
    request = EditRequest(image=noise, regions=[{"category": "people", "bbox": [100, 60, 200, 180]}])
    [blurred] = editor.edit([request])
    request.strength = 1
    [filled] = editor.edit([request])
    centre = (slice(110, 130), slice(140, 160))
    assert blurred.shape == filled.shape == noise.shape
    assert len(np.unique(filled[centre].reshape(-1, 3), axis=0)) == 1  # solid
    assert len(np.unique(blurred[centre].reshape(-1, 3), axis=0)) > 1


def test_unknown_method_is_refused(noise):
    with pytest.raises(ValueError):
        obscure_regions(noise, [{"category": "people", "bbox": [0, 0, 10, 10]}], "smudge")
