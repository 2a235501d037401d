"""EditStage on in-memory rows with the deterministic fake editor: selection, buckets and
resize-back, seeds, region scope, fail-closed paths and verification escalation."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import ScriptedVerifier, copy_rows, edit_stage, make_image, make_row

from unsafe2safe_ray import records
from unsafe2safe_ray.editors.base import (
    NonFiniteOutputError,
    blend,
    region_mask,
    to_uint8,
    working_size,
)


# -- image utilities ---------------------------------------------------------------------------

def test_working_size_native_keeps_size_on_grid_and_downscales_only_above_max_side():
    assert working_size(1000, 700, multiple=16, max_side=1536) == (992, 688)
    assert working_size(3000, 2000, multiple=16, max_side=1536) == (1536, 1024)
    assert working_size(10, 10, multiple=16, max_side=1536) == (16, 16)
    assert working_size(1000, 700, multiple=16, max_side=1536, scale=0.5) == (496, 336)


def test_working_size_area_buckets_similar_shapes_together():
    a = working_size(480, 640, multiple=64, max_side=4096, target_area=512 * 512)
    b = working_size(600, 800, multiple=64, max_side=4096, target_area=512 * 512)
    c = working_size(800, 600, multiple=64, max_side=4096, target_area=512 * 512)
    assert a == b and a != c
    assert a[0] % 64 == 0 and a[1] % 64 == 0


def test_region_mask_is_zero_outside_dilated_union_and_ramps_inside():
    mask = region_mask((60, 80), [{"bbox": [20, 10, 40, 30]}], dilation=0.1, feather=4)
    # dilation: 10 % of the longer side (20 px) = 2 px per edge
    assert mask[:8].max() == 0 and mask[32:].max() == 0 and mask[:, :18].max() == 0 and mask[:, 42:].max() == 0
    assert mask[20, 30] == 1.0
    assert 0 < mask[8, 30] < 1  # feathered edge
    assert region_mask((60, 80), [], 0.1, 4).max() == 0


def test_blend_copies_outside_pixels_byte_for_byte():
    original = make_image("a", 40, 50)
    edited = 255 - original
    mask = region_mask((40, 50), [{"bbox": [10, 10, 20, 20]}], 0.0, 3)
    out = blend(original, edited, mask)
    assert np.array_equal(out[mask == 0], original[mask == 0])
    assert np.array_equal(out[mask == 1], edited[mask == 1])


def test_to_uint8_refuses_non_finite_output():
    good = np.full((1, 4, 4, 3), 0.5, np.float32)
    assert to_uint8(good)[0].dtype == np.uint8
    bad = good.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(NonFiniteOutputError):
        to_uint8(bad)


# -- selection and the row contract --------------------------------------------------------------

def test_only_flagged_rows_are_edited():
    stage = edit_stage()
    flagged, safe = make_row("flagged"), make_row("safe", flag=False)
    failed = records.fail(make_row("failed"), "earlier stage")
    original_flagged, original_safe = flagged["image"], safe["image"]
    out = stage.process([flagged, safe, failed])
    assert [r["status"] for r in out] == [records.EDITED, records.PENDING, records.FAILED]
    assert out[0]["editor"] == "fake"
    assert out[0]["image"] != original_flagged
    assert out[1]["image"] == original_safe
    assert out[2]["image"] is None
    verification = out[0]["verification"]
    assert verification["scope"] == "global" and verification["verified"] is False
    assert verification["attempts"][0]["seed"] == flagged["seed"]


def test_edit_all_edits_unflagged_rows_too():
    out = edit_stage("edit.edit_all=true").process([make_row("a", flag=False)])
    assert out[0]["status"] == records.EDITED


def test_buckets_share_one_size_per_call_and_outputs_come_back_at_original_size():
    stage = edit_stage("edit.max_side=64", "edit.batch_size=8")
    sizes = [(50, 70), (50, 70), (120, 90), (33, 47), (50, 70)]
    rows = [make_row(f"k{i}", h, w) for i, (h, w) in enumerate(sizes)]
    out = stage.process(rows)
    # (50,70) x3 -> scaled to 45.7x64, on the grid (32, 64); (120, 90) -> (64, 48); (33, 47) -> (32, 32)
    assert sorted(stage.editor.calls) == sorted([(3, 32, 64, 0), (1, 64, 48, 0), (1, 32, 32, 0)])
    for row, (h, w) in zip(out, sizes):
        assert (row["height"], row["width"]) == (h, w)
        assert records.get_image(row).shape == (h, w, 3)


def test_batch_size_splits_a_bucket():
    stage = edit_stage("edit.batch_size=2")
    stage.process([make_row(f"k{i}") for i in range(5)])
    assert [c[0] for c in stage.editor.calls] == [2, 2, 1]


def test_area_resolution_batches_different_sizes_of_one_shape():
    stage = edit_stage("edit.resolution=area", "edit.bucket_area=4096", "edit.bucket_multiple=16")
    out = stage.process([make_row("a", 100, 150), make_row("b", 120, 180), make_row("c", 64, 96)])
    assert len(stage.editor.calls) == 1 and stage.editor.calls[0][0] == 3
    assert [(r["height"], r["width"]) for r in out] == [(100, 150), (120, 180), (64, 96)]


def test_same_key_gives_same_pixels_and_another_seed_changes_them():
    rows = [make_row("a"), make_row("b")]
    first = edit_stage().process(copy_rows(rows))
    second = edit_stage().process(copy_rows(rows))
    assert [r["image"] for r in first] == [r["image"] for r in second]
    reseeded = copy_rows(rows)
    reseeded[0]["seed"] += 1
    third = edit_stage().process(reseeded)
    assert third[0]["image"] != first[0]["image"] and third[1]["image"] == first[1]["image"]


# -- region scope -----------------------------------------------------------------------------

def test_region_scope_leaves_pixels_outside_the_dilated_regions_identical():
    regions = [{"category": "people", "bbox": [10, 8, 30, 28]},
               {"category": "text_and_symbols", "bbox": [60, 40, 90, 60]}]
    row = make_row("r", 64, 96, regions=regions)
    original = records.get_image(row).copy()
    out = edit_stage("edit.scope=regions", "edit.dilation=0.1", "edit.feather=3").process([row])[0]
    edited = records.get_image(out)
    outside = np.ones((64, 96), bool)
    outside[6:31, 8:33] = False  # box 1 grown by 2 px (10 % of 20)
    outside[37:63, 57:93] = False  # box 2 grown by 3 px (10 % of 30)
    assert np.array_equal(edited[outside], original[outside])
    assert not np.array_equal(edited[15:22, 15:25], original[15:22, 15:25])
    assert out["verification"]["scope"] == "regions"


def test_region_scope_without_regions_still_edits_the_whole_image():
    row = make_row("r")
    original = records.get_image(row).copy()
    out = edit_stage("edit.scope=regions").process([row])[0]
    assert out["status"] == records.EDITED
    assert out["verification"]["scope"] == "global-no-regions"
    assert not np.array_equal(records.get_image(out)[:8, :8], original[:8, :8])


# -- fail closed ------------------------------------------------------------------------------

def test_nan_output_is_retried_smaller_then_becomes_a_failed_row_without_pixels():
    stage = edit_stage("edit.editor=fake:nan")
    out = stage.process([make_row("a", 64, 96), make_row("b", 64, 96)])
    assert all(r["status"] == records.FAILED for r in out)
    assert all(r["image"] is None and r["error_stage"] == "edit" for r in out)
    assert "NonFiniteOutputError" in out[0]["error"]
    # one batch call, then each image alone at half size
    assert stage.editor.calls == [(2, 64, 96, 0), (1, 32, 48, 0), (1, 32, 48, 0)]


def test_oom_batch_is_retried_alone_at_lower_resolution_and_succeeds():
    stage = edit_stage("edit.editor=fake:oom-large")
    rows = [make_row("a", 100, 128), make_row("b", 100, 128)]
    out = stage.process(rows)
    assert [r["status"] for r in out] == [records.EDITED, records.EDITED]
    assert stage.editor.calls[0] == (2, 96, 128, 0)
    assert stage.editor.calls[1:] == [(1, 48, 64, 0), (1, 48, 64, 0)]
    assert all((r["height"], r["width"]) == (100, 128) for r in out)
    assert out[0]["verification"]["attempts"][0]["scale"] == 0.5


def test_persistent_oom_fails_the_row():
    out = edit_stage("edit.editor=fake:oom").process([make_row("a")])[0]
    assert out["status"] == records.FAILED and out["image"] is None
    assert "FakeOutOfMemoryError" in out["error"]


# -- verification and escalation ----------------------------------------------------------------

def _with_verifier(stage, verifier):
    stage.verifier = verifier
    return stage


def test_a_leak_is_re_edited_with_another_seed_and_stronger_settings():
    stage = _with_verifier(edit_stage("edit.retries=2"), ScriptedVerifier(leaky_checks=1))
    row = make_row("a")
    out = stage.process([row])[0]
    assert out["status"] == records.EDITED
    info = out["verification"]
    assert info["verified"] and info["ok"] and info["fallback"] is None
    assert [a["strength"] for a in info["attempts"]] == [0, 1]
    assert [a["ok"] for a in info["attempts"]] == [False, True]
    assert info["attempts"][1]["seed"] != row["seed"]
    assert [c[3] for c in stage.editor.calls] == [0, 1]
    assert info["checks"] == {"faces_checked": 1, "min_face_distance": 0.9}


def test_a_leak_that_survives_retries_gets_classic_fill_on_the_leaking_region():
    verifier = ScriptedVerifier(bbox=(4, 4, 20, 20), until_filled=True)
    stage = _with_verifier(edit_stage("edit.retries=1"), verifier)
    row = make_row("a", 64, 96)
    original = records.get_image(row).copy()
    out = stage.process([row])[0]
    assert out["status"] == records.EDITED
    info = out["verification"]
    assert info["fallback"] == "fill" and info["ok"]
    edited = records.get_image(out)
    assert len(np.unique(edited[4:20, 4:20].reshape(-1, 3), axis=0)) == 1
    # far from the leak the diffusion edit stays
    assert not np.array_equal(edited[40:, 60:], original[40:, 60:])


def test_a_leak_that_survives_everything_fails_the_row():
    stage = _with_verifier(edit_stage("edit.retries=1"), ScriptedVerifier(leaky_checks=99))
    out = stage.process([make_row("a"), make_row("b", flag=False)])
    assert out[0]["status"] == records.FAILED and out[0]["image"] is None
    assert "privacy check still fails" in out[0]["error"] and "classic fill" in out[0]["error"]
    assert out[1]["status"] == records.PENDING


def test_without_classic_fallback_a_persistent_leak_fails_after_the_retries():
    stage = _with_verifier(edit_stage("edit.retries=2", "edit.classic_fallback=false"),
                           ScriptedVerifier(leaky_checks=99))
    out = stage.process([make_row("a")])[0]
    assert out["status"] == records.FAILED and "classic" not in out["error"]
    assert [c[3] for c in stage.editor.calls] == [0, 1, 2]


def test_setup_loads_the_real_verifier_when_verification_is_on():
    from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

    stage = edit_stage("edit.verify=true", "verify.required_checks=[faces, text]")
    assert isinstance(stage.verifier, PrivacyVerifier)


def test_real_verifier_catches_a_face_outside_the_edited_regions_and_classic_fill_fixes_it(sample_images):
    """Region scope on a box away from the astronaut's face leaves the face intact: the real
    verifier (CenterFace + dlib) finds the same identity, the retry cannot help (the face stays
    outside the regions), and the classic fill on the leaking face box makes the row pass."""
    from PIL import Image

    from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

    image = np.asarray(Image.open(sample_images / "astronaut.jpg").convert("RGB"))
    h, w = image.shape[:2]
    row = make_row("astro", image=image, regions=[{"category": "text_and_symbols", "bbox": [w - 60, h - 60, w - 10, h - 10]}])
    stage = edit_stage("edit.scope=regions", "edit.retries=1", "edit.feather=0")
    stage.verifier = PrivacyVerifier(stage.config.verify)
    out = stage.process([row])[0]
    assert out["status"] == records.EDITED, out["error"]
    info = out["verification"]
    assert [a.get("ok") for a in info["attempts"]] == [False, False, True]
    assert info["attempts"][0]["leaks"][0]["kind"] == "face_identity"
    assert info["fallback"] == "fill" and info["ok"]
    face = info["attempts"][0]["leaks"][0]["bbox"]
    x0, y0, x1, y1 = (int(v) for v in face)
    edited = records.get_image(out)
    assert not np.array_equal(edited[y0:y1, x0:x1], image[y0:y1, x0:x1])
