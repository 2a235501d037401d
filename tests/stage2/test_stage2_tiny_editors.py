"""Each diffusion editor end to end through the EditStage, on real diffusers pipelines loaded
with ``from_pretrained`` from the tiny random-weight folders (``tiny`` profile)."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import copy_rows, make_image, make_row

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.editors.base import EditRequest
from unsafe2safe_ray.stages.edit import EditStage

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("tiny_models")]

EDITORS = ["instruct-pix2pix", "flowedit", "kontext"]
_STAGES: dict[tuple, EditStage] = {}


def tiny_stage(*overrides: str) -> EditStage:
    """An EditStage on the tiny profile (cached per overrides: loading is the slow part)."""
    key = tuple(overrides)
    if key not in _STAGES:
        stage = EditStage(load_config("tiny", overrides=["edit.verify=false", "verify.required_checks=[]", *overrides]))
        stage.setup()
        _STAGES[key] = stage
    return _STAGES[key]


def _rows():
    # Two sizes: two images share a bucket, one is non-square on its own. 200 px is above the
    # tiny profile's max_side (128), so it is edited smaller and resized back.
    shared = make_image("shared", 96, 128)
    return [make_row("a", image=shared), make_row("b", image=shared), make_row("c", 200, 120)]


@pytest.mark.parametrize("editor", EDITORS)
def test_editor_edits_every_flagged_row_at_its_original_size_deterministically(editor):
    stage = tiny_stage(f"edit.editor={editor}")
    rows = _rows()
    originals = [r["image"] for r in rows]
    first = stage.process(copy_rows(rows))
    for row, original, (h, w) in zip(first, originals, [(96, 128), (96, 128), (200, 120)]):
        assert row["status"] == records.EDITED, row["error"]
        assert row["editor"] == editor
        assert (row["height"], row["width"]) == (h, w)
        assert row["image"] != original
        pixels = records.get_image(row)
        assert pixels.std() > 0  # a decoded image, not a constant fill
    assert first[0]["seed"] != first[1]["seed"]
    assert first[0]["image"] != first[1]["image"]  # same pixels in, different seeds
    second = stage.process(copy_rows(rows))
    assert [r["image"] for r in second] == [r["image"] for r in first]


def test_kontext_keeps_the_requested_size_instead_of_its_1mp_default():
    editor = tiny_stage("edit.editor=kontext").editor
    (out,) = editor.edit([EditRequest(image=make_image("k", 80, 112), instruction="change the hair", seed=1)])
    assert out.shape == (80, 112, 3)


def _roundtrip(editor, image: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return editor._decode(editor._encode([image]))[0]


def test_flowedit_with_n_max_zero_returns_the_vae_round_trip():
    stage = tiny_stage("edit.editor=flowedit", "edit.flowedit_n_max=0")
    row = make_row("z", 96, 128)
    original = records.get_image(row).copy()
    out = stage.process([row])[0]
    expected = _roundtrip(stage.editor, original)
    assert np.abs(records.get_image(out).astype(int) - expected.astype(int)).max() <= 1


def test_flowedit_equal_prompts_and_guidance_is_a_no_op_and_different_prompts_edit():
    # V(z_tar, target) - V(z_src, source) is exactly zero when prompts and CFG scales agree,
    # because z_tar == z_src while z_fe == x_src: the ODE never moves.
    stage = tiny_stage("edit.editor=flowedit", "edit.flowedit_tar_guidance=3.5")
    image = make_image("e", 96, 128)
    same = stage.editor.edit([EditRequest(image=image, source_prompt="a man in the street",
                                          target_prompt="a man in the street", seed=3)])[0]
    other = stage.editor.edit([EditRequest(image=image, source_prompt="a man in the street",
                                           target_prompt="a cat sitting on a chair in a kitchen", seed=3)])[0]
    roundtrip = _roundtrip(stage.editor, image)
    assert np.abs(same.astype(int) - roundtrip.astype(int)).max() <= 1
    assert np.abs(other.astype(int) - roundtrip.astype(int)).mean() > 1.0


def test_flowedit_higher_strength_widens_the_edit_window():
    stage = tiny_stage("edit.editor=flowedit", "edit.steps=10", "edit.flowedit_n_max=5")
    editor = stage.editor
    calls = []
    original = editor._velocities
    editor._velocities = lambda *a: calls.append(1) or original(*a)
    try:
        image = make_image("s", 64, 64)
        editor.edit([EditRequest(image=image, source_prompt="a man", target_prompt="a woman", seed=1)])
        base = len(calls)
        editor.edit([EditRequest(image=image, source_prompt="a man", target_prompt="a woman", seed=1, strength=1)])
    finally:
        editor._velocities = original
    assert base == 5 and len(calls) - base == 6  # n_max + ceil(0.1 * T)


def test_region_scope_with_a_real_editor_keeps_outside_pixels():
    stage = tiny_stage("edit.editor=instruct-pix2pix", "edit.scope=regions", "edit.dilation=0", "edit.feather=2")
    row = make_row("r", 96, 128, regions=[{"category": "people", "bbox": [16, 16, 48, 64]}])
    original = records.get_image(row).copy()
    out = stage.process([row])[0]
    edited = records.get_image(out)
    outside = np.ones((96, 128), bool)
    outside[16:64, 16:48] = False
    assert np.array_equal(edited[outside], original[outside])
    assert not np.array_equal(edited[20:60, 20:44], original[20:60, 20:44])
    assert out["verification"]["scope"] == "regions"


@pytest.mark.parametrize("case", ["none", "one", "out_of_bounds", "degenerate"])
@pytest.mark.parametrize("editor", EDITORS)
def test_no_generative_edit_is_published_with_its_sensitive_pixels_unchanged(editor, case):
    """The fail-closed property of the edit stage (see test_fail_closed.py) with the real
    diffusers pipelines (tiny random weights)."""
    from test_fail_closed import REGION_CASES, assert_never_published_unchanged

    stage = tiny_stage(f"edit.editor={editor}")
    row = make_row(f"{editor}-{case}", 64, 96, regions=REGION_CASES[case])
    original = records.get_image(row).copy()
    [out] = stage.process([dict(row)])
    assert out["status"] == records.EDITED, out["error"]
    assert_never_published_unchanged(row, original, out)


@pytest.mark.parametrize("editor", EDITORS)
def test_crop_scope_runs_each_tiny_pipeline_and_keeps_outside_pixels(editor):
    stage = tiny_stage(f"edit.editor={editor}", "edit.scope=crops", "edit.crop_size=64", "edit.crop_min_side=32",
                       "edit.feather=2", "edit.max_side=512")
    row = make_row(f"crop-{editor}", 160, 224, regions=[{"category": "people", "bbox": [20, 20, 52, 60]}])
    original = records.get_image(row).copy()
    [out] = stage.process([dict(row)])
    assert out["status"] == records.EDITED, out["error"]
    edited = records.get_image(out)
    assert np.array_equal(edited[100:, 100:], original[100:, 100:])  # far from the only window
    assert not np.array_equal(edited[20:60, 20:52], original[20:60, 20:52])
    assert out["verification"]["scope"] == "crops"


def _golden_input():
    return make_row("golden", 64, 64, regions=[])


@pytest.mark.parametrize("editor", EDITORS)
def test_golden_output_slice(editor):
    """A fixed image, seed and prompt through each tiny pipeline (weights seeded at build time):
    the corner slice must stay where it was (as diffusers' own pipeline tests do), so numerical
    drift from a dependency or an editor change is seen, not silently shipped."""
    stage = tiny_stage(f"edit.editor={editor}")
    [out] = stage.process([_golden_input()])
    assert out["status"] == records.EDITED, out["error"]
    got = records.get_image(out)[:3, :3, 0].astype(int)
    np.testing.assert_allclose(got, np.array(GOLDEN[editor]), atol=3)


# Red channel of the top-left 3x3 pixels, recorded on the tiny pipelines (CPU, float32).
GOLDEN: dict[str, list[list[int]]] = {
    "instruct-pix2pix": [[141, 154, 164], [128, 145, 179], [162, 198, 208]],
    "flowedit": [[122, 109, 118], [94, 100, 121], [97, 106, 113]],
    "kontext": [[136, 138, 147], [153, 173, 164], [155, 179, 173]],
}
