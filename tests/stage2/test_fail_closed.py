"""Regression tests for the two privacy faults of issue 10, and the fail-closed rule of the edit
stage over editors that do not do their job.

1. A flagged row without regions, edited by a region editor (classic), must never come out as
   ``edited`` with its original pixels.
2. A batch that raises halfway is retried row by row from untouched copies, so no row is edited
   twice and the verifier always compares with the true original.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import edit_stage, make_image, make_row
from unsafe2safe_ray import records
from unsafe2safe_ray.editors.base import Editor
from unsafe2safe_ray.editors.classic import ObscureSettings, obscure_regions
from unsafe2safe_ray.stages.base import Stage, run_rows

FACE = {"category": "people", "bbox": [10, 8, 30, 28]}


# -- fault 1: original pixels published as edited --------------------------------------------------

def test_classic_editor_fails_a_flagged_row_without_regions():
    row = make_row("a", regions=[])
    original = row["image"]
    [out] = run_rows(edit_stage("edit.editor=classic"), [row])
    assert out["status"] == records.FAILED and out["image"] is None
    assert out["error_stage"] == "edit" and "no regions to obscure" in out["error"]
    assert out["image"] != original


def test_classic_edit_all_leaves_unflagged_rows_without_regions_unedited():
    row = make_row("a", flag=False, regions=[])
    original = row["image"]
    [out] = run_rows(edit_stage("edit.editor=classic", "edit.edit_all=true"), [row])
    # Nothing to obscure and nothing sensitive: the row passes as it is, never "edited".
    assert out["status"] == records.PENDING and out["image"] == original


def test_the_job_never_publishes_a_flagged_image_unchanged_as_edited(tmp_path, ray_local, monkeypatch):
    """The reported reproduction, through ``run_job``: every image flagged without boxes (as a
    VLM that returns no regions would leave it), then the classic editor with edit_all."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job
    from unsafe2safe_ray.output import open_output

    monkeypatch.setenv("U2S_TEST_EDIT", "none")  # testing.flag_all flags every image, edits none
    (tmp_path / "in").mkdir()
    for i in range(3):
        from PIL import Image

        Image.fromarray(make_image(f"k{i}", 48, 64)).save(tmp_path / "in" / f"k{i}.png")
    config = load_config("none", overrides=["stages=[testing.flag_all, edit]", "edit.editor=classic",
                                            "edit.edit_all=true", "edit.num_cpus=0.25", "verify.threads=1"])
    result = run_job(str(tmp_path / "in"), str(tmp_path / "out"), config)
    assert result.counts == {"edited": 0, "passed": 0, "failed": 3}
    rows = open_output(str(tmp_path / "out")).captions().to_pylist()
    assert {r["error_stage"] for r in rows} == {"edit"}
    import tarfile

    for tar_path in (tmp_path / "out" / "images").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            assert all(m.name.endswith(".json") for m in tar)  # no pixels of any flagged image


# -- fault 2: a retried batch corrupts the evidence ------------------------------------------------

class _MutateThenRaise(Stage):
    """Edits every row in place, then raises on a row marked ``bad``: the first attempt leaves
    half-edited rows behind."""

    name = "mutate"

    def process(self, rows):
        for row in rows:
            row["edit_instruction"] = (row.get("edit_instruction") or "") + "+edited"
            if row["key"] == "bad":
                raise RuntimeError("bad row")
        return rows


def test_a_retried_batch_starts_from_the_untouched_rows():
    good, bad = make_row("good"), make_row("bad")
    good["edit_instruction"] = bad["edit_instruction"] = "x"
    out = run_rows(_MutateThenRaise(None), [good, bad])
    assert out[0]["edit_instruction"] == "x+edited"  # once, not twice
    assert out[1]["status"] == records.FAILED and out[1]["error_stage"] == "mutate"
    assert good["edit_instruction"] == "x"  # the caller's input rows are never written to


class _SpyVerifier:
    """Passes everything and records the original it was asked to compare against."""

    def __init__(self):
        self.originals: list[bytes] = []

    def check(self, original, edited, regions):
        from unsafe2safe_ray.detectors.verifier import VerifyReport

        self.originals.append(np.asarray(original).tobytes())
        return VerifyReport(leaks=[], checks={}, checks_run=["faces", "text"], required=["faces", "text"])


def test_a_malformed_region_fails_its_row_and_the_good_row_is_obscured_once_against_its_true_original():
    stage = edit_stage("edit.editor=classic", "edit.verify=true", "verify.required_checks=[faces, text]")
    stage.verifier = spy = _SpyVerifier()
    good = make_row("good", regions=[FACE])
    bad = make_row("bad", regions=[FACE, {"category": "people", "bbox": ["a", "b", "c", "d"]}])
    true_original = records.get_image(good).copy()
    out = run_rows(stage, [good, bad])
    assert out[1]["status"] == records.FAILED and "region 1" in out[1]["error"]
    assert out[0]["status"] == records.EDITED
    once = obscure_regions(true_original, [FACE], settings=ObscureSettings.from_config(stage.config.classic))
    assert np.array_equal(records.get_image(out[0]), once)
    assert spy.originals == [true_original.tobytes()]


# -- the property: no editor, no region situation publishes unchanged sensitive pixels --------------

class _IdentityEditor(Editor):
    """An editor that returns its input: the worst a broken model can do."""

    name = "identity"
    size_multiple = None

    def edit(self, requests):
        return [np.array(r.image) for r in requests]


class _ElsewhereEditor(Editor):
    """Changes pixels, but only outside the regions it was given."""

    name = "elsewhere"
    size_multiple = None

    def edit(self, requests):
        out = []
        for r in requests:
            image = 255 - np.array(r.image)
            for region in r.regions:
                x0, y0, x1, y1 = (int(round(v)) for v in region["bbox"])
                image[y0:y1, x0:x1] = r.image[y0:y1, x0:x1]
            out.append(image)
        return out


REGION_CASES = {
    "none": [],
    "one": [FACE],
    "many": [FACE, {"category": "text_and_symbols", "bbox": [40, 30, 90, 50]}],
    "out_of_bounds": [{"category": "people", "bbox": [80, 50, 140, 120]}],
    "fully_outside": [{"category": "people", "bbox": [200, 200, 260, 260]}],
    "degenerate": [{"category": "people", "bbox": [30, 30, 30, 50]}],
    "malformed": [{"category": "people", "bbox": [1, 2]}],
}


def _sensitive_boxes(regions, height, width):
    from unsafe2safe_ray.detectors.geometry import BoxError, clip_box

    boxes = []
    for region in regions:
        try:
            box = clip_box(region["bbox"], height, width)
        except BoxError:
            continue
        if box:
            boxes.append(box)
    return boxes or [[0, 0, width, height]]


def assert_never_published_unchanged(row_in: dict, original: np.ndarray, out: dict) -> None:
    """The invariant: an ``edited`` row changed every sensitive box (the whole image when it
    has none); a flagged row is edited or failed, never pending with its pixels."""
    if row_in["privacy_flag"]:
        assert out["status"] in (records.EDITED, records.FAILED), out["status"]
    if out["status"] != records.EDITED:
        return
    edited = records.get_image(out)
    height, width = original.shape[:2]
    for x0, y0, x1, y1 in _sensitive_boxes(row_in["regions"], height, width):
        assert not np.array_equal(edited[y0:y1, x0:x1], original[y0:y1, x0:x1]), (x0, y0, x1, y1)


@pytest.mark.parametrize("case", sorted(REGION_CASES))
@pytest.mark.parametrize("editor", ["classic", "fake", "identity", "elsewhere"])
@pytest.mark.parametrize("scope", ["global", "regions", "crops"])
def test_no_row_is_published_as_edited_with_its_sensitive_pixels_unchanged(editor, case, scope):
    stage = edit_stage(f"edit.editor={'classic' if editor == 'classic' else 'fake'}", f"edit.scope={scope}",
                       "edit.retries=1")
    if editor == "identity":
        stage.editor = _IdentityEditor()
    elif editor == "elsewhere":
        stage.editor = _ElsewhereEditor()
    row = make_row(f"{editor}-{case}", 64, 96, regions=REGION_CASES[case])
    original = records.get_image(row).copy()
    [out] = run_rows(stage, [dict(row)])
    assert_never_published_unchanged(row, original, out)
    if editor == "identity":
        assert out["status"] == records.FAILED  # nothing changed anywhere: never "edited"


# -- verification honesty ---------------------------------------------------------------------------

def test_switching_a_required_check_off_is_refused_with_what_to_do():
    from unsafe2safe_ray.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"verify.check_faces is off .*required_checks"):
        load_config("cpu", overrides=["verify.check_faces=false"])
    with pytest.raises(ConfigError, match=r"edit.verify is off"):
        load_config("cpu", overrides=["edit.verify=false"])
    assert load_config("cpu", overrides=["verify.check_faces=false", "verify.required_checks=[text]"])


def test_a_check_that_did_not_run_is_recorded_as_skipped_and_never_as_verified():
    stage = edit_stage("edit.editor=classic", "edit.verify=true", "verify.check_faces=false", "verify.check_text=false",
                       "verify.required_checks=[]")
    [out] = run_rows(stage, [make_row("a", regions=[FACE])])
    info = out["verification"]
    assert out["status"] == records.EDITED
    assert info["ok"] is None and info["verified"] is False  # nothing checked: not "ok"
    assert info["checks_run"] == [] and info["checks_skipped"] == ["faces", "text"]


def test_the_run_report_says_which_checks_were_skipped():
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import verification_summary

    config = load_config("cpu", overrides=["verify.check_faces=false", "verify.required_checks=[text]"])
    assert verification_summary(config) == {"required": ["text"], "enabled": ["text"], "skipped": ["faces"]}
    assert verification_summary(load_config("cpu"))["skipped"] == []


def test_status_shows_a_run_that_published_unverified_edits(tmp_path, ray_local, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    from unsafe2safe_ray.cli import app
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job, shard_status

    monkeypatch.setenv("U2S_TEST_EDIT", "none")
    (tmp_path / "in").mkdir()
    Image.fromarray(make_image("u", 48, 64)).save(tmp_path / "in" / "u.png")
    config = load_config("none", overrides=["stages=[testing.flag_all, edit]", "edit.editor=fake", "edit.num_cpus=0.25",
                                            "verify.check_faces=false", "verify.check_text=false",
                                            "verify.required_checks=[]"])
    result = run_job(str(tmp_path / "in"), str(tmp_path / "out"), config, run_id="unverified")
    assert result.counts["edited"] == 1
    assert result.to_json()["verification"]["skipped"] == ["faces", "text"]
    assert shard_status(str(tmp_path / "out"))["verification_skipped"] == {"unverified": ["faces", "text"]}
    shown = CliRunner().invoke(app, ["status", str(tmp_path / "out")])
    assert "without the faces, text check(s)" in shown.output
