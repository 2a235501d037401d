"""Region-crop editing (``edit.scope=crops``): window geometry, byte-identical outside pixels,
batching by bucket, fallback without regions and escalation on a crop."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import ScriptedVerifier, edit_stage, make_row
from unsafe2safe_ray import records
from unsafe2safe_ray.editors.base import region_mask
from unsafe2safe_ray.editors.crops import crop_windows, paste_window, region_prompts
from unsafe2safe_ray.stages.base import run_rows


def _face(x0, y0, x1, y1, category="people"):
    return {"category": category, "bbox": [x0, y0, x1, y1]}


# -- geometry -------------------------------------------------------------------------------------

def test_a_window_grows_by_the_margin_and_keeps_the_region_inside():
    [window] = crop_windows([_face(100, 100, 140, 160)], 512, 512, margin=0.5, min_side=16)
    assert window.box == [70, 100 - 30, 170, 190]  # 0.5 x the longer side (60) on every edge
    assert window.regions[0]["bbox"] == [30, 30, 70, 90]  # in window pixels


def test_tiny_regions_get_at_least_min_side_of_context():
    [window] = crop_windows([_face(200, 200, 204, 204)], 512, 512, margin=0.5, min_side=128)
    assert window.size == (128, 128)


def test_windows_are_clipped_at_the_border():
    [window] = crop_windows([_face(0, 0, 30, 30)], 100, 120, margin=1.0, min_side=16)
    assert window.box[:2] == [0, 0] and window.box[2] <= 120 and window.box[3] <= 100


def test_overlapping_windows_merge_and_far_ones_stay_apart():
    regions = [_face(100, 100, 140, 140), _face(150, 110, 190, 150), _face(400, 400, 430, 430)]
    windows = crop_windows(regions, 512, 512, margin=0.25, min_side=16)
    assert len(windows) == 2
    assert len(windows[0].regions) == 2 and len(windows[1].regions) == 1
    # Chains merge too: a merged window that now overlaps a third one takes it in.
    chain = [_face(10 + 45 * i, 10, 50 + 45 * i, 50) for i in range(4)]
    assert len(crop_windows(chain, 300, 300, margin=0.1, min_side=16)) == 1


def test_a_huge_region_gives_the_whole_image():
    [window] = crop_windows([_face(5, 5, 250, 250)], 256, 256, margin=0.5, min_side=16)
    assert window.box == [0, 0, 256, 256]


def test_paste_changes_only_the_region_mask():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    [window] = crop_windows([_face(60, 40, 90, 70)], 120, 160, margin=0.5, min_side=16)
    edited_crop = np.zeros((64, 64, 3), np.uint8)  # any size: resized to the window
    out = paste_window(original, original, window, edited_crop, dilation=0.1, feather=3)
    x0, y0, x1, y1 = window.box
    mask = np.zeros((120, 160), bool)
    mask[y0:y1, x0:x1] = region_mask(window.size, window.regions, 0.1, 3) > 0
    assert np.array_equal(out[~mask], original[~mask])
    assert (out[mask] != original[mask]).any()


def test_region_prompts_name_the_category():
    target, instruction = region_prompts([_face(0, 0, 1, 1), _face(0, 0, 1, 1, "text_and_symbols")],
                                         "a street", "Make the person anonymous.")
    assert target.startswith("a close-up of a person's face and text") and "a street" in target
    assert instruction.startswith("Make the person anonymous.")


# -- the stage ----------------------------------------------------------------------------------

def _crop_stage(*overrides):
    return edit_stage("edit.scope=crops", "edit.crop_size=64", "edit.crop_min_side=32", "edit.feather=2",
                      "edit.max_side=1024", *overrides)


def test_crops_edit_inside_the_masks_and_leave_everything_else_byte_identical():
    regions = [_face(20, 20, 44, 52), _face(150, 100, 180, 120, "text_and_symbols")]
    row = make_row("c", 160, 224, regions=regions)
    original = records.get_image(row).copy()
    stage = _crop_stage()
    [out] = run_rows(stage, [row])
    assert out["status"] == records.EDITED, out["error"]
    edited = records.get_image(out)
    mask = np.zeros((160, 224), bool)
    for window in crop_windows(regions, 160, 224, 0.5, 32):
        x0, y0, x1, y1 = window.box
        mask[y0:y1, x0:x1] |= region_mask(window.size, window.regions, stage.config.edit.dilation, 2) > 0
    assert np.array_equal(edited[~mask], original[~mask])
    for x0, y0, x1, y1 in (r["bbox"] for r in regions):
        assert not np.array_equal(edited[y0:y1, x0:x1], original[y0:y1, x0:x1])
    info = out["verification"]
    assert info["scope"] == "crops" and info["attempts"][0]["crops"] == 2
    # Only crops went to the editor, never the whole 160x224 image.
    assert all(max(h, w) <= 96 for _n, h, w, _s in stage.editor.calls)


def test_crops_of_many_images_share_one_bucket_call():
    rows = [make_row(f"k{i}", 128, 128, regions=[_face(30, 30, 60, 60)]) for i in range(3)]
    stage = _crop_stage("edit.batch_size=8")
    run_rows(stage, rows)
    assert [c[0] for c in stage.editor.calls] == [3]


def test_a_flagged_row_without_regions_falls_back_to_the_whole_image():
    row = make_row("n", 64, 96, regions=[])
    original = records.get_image(row).copy()
    [out] = run_rows(_crop_stage(), [row])
    assert out["status"] == records.EDITED
    assert out["verification"]["scope"] == "global-no-regions"
    assert not np.array_equal(records.get_image(out), original)


def test_a_leaking_crop_is_re_edited_stronger_then_filled():
    stage = _crop_stage("edit.retries=1")
    stage.verifier = ScriptedVerifier(leaky_checks=99, bbox=(20, 20, 44, 52))
    [out] = run_rows(stage, [make_row("l", 128, 128, regions=[_face(20, 20, 44, 52)])])
    assert [c[3] for c in stage.editor.calls] == [0, 1]  # the crop again, at strength 1
    assert out["status"] == records.FAILED and "classic fill" in out["error"]


def test_a_crop_that_runs_out_of_memory_is_retried_alone_smaller():
    stage = _crop_stage("edit.editor=fake:oom-large", "edit.batch_size=4", "edit.bucket_multiple=16")
    stage.editor.large_side = 40
    rows = [make_row(f"o{i}", 128, 128, regions=[_face(30, 30, 60, 60)]) for i in range(2)]
    out = run_rows(stage, rows)
    assert [r["status"] for r in out] == [records.EDITED, records.EDITED]
    assert stage.editor.calls[0][0] == 2 and all(c[0] == 1 and c[1] <= 40 for c in stage.editor.calls[1:])


@pytest.mark.parametrize("editor", ["classic"])
def test_crops_leave_region_editors_as_they_are(editor):
    row = make_row("k", 64, 96, regions=[_face(10, 10, 30, 30)])
    [out] = run_rows(_crop_stage(f"edit.editor={editor}"), [row])
    assert out["status"] == records.EDITED and out["verification"]["scope"] != "crops"
