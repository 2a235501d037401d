"""The `cpu` profile: its stages on row dicts, and the whole job over examples/images.

Real detectors throughout (CenterFace, rapidocr, dlib); nothing is faked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.stages.base import run_rows

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def _rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / name).convert("RGB"))


def _row(name: str, label: str | None = None) -> dict:
    row = records.new_row(Path(name).stem, 0, str(EXAMPLES / name), label, 7)
    records.set_image(row, _rgb(name))
    return row


@pytest.fixture(scope="module")
def config():
    return load_config("cpu")


@pytest.fixture(scope="module")
def stages(config):
    """detect and edit (classic editor + verifier), each set up once (models load here)."""
    from unsafe2safe_ray.stages import load_stage_class

    built = [load_stage_class(name)(config) for name in config.stages]
    for stage in built:
        stage.setup()
    return built


@pytest.fixture(scope="module")
def processed(stages):
    """Every example image through the stages, as the Ray adapter would run them."""
    rows = [_row(p.name) for p in sorted(EXAMPLES.iterdir()) if p.suffix in (".jpg", ".png")]
    for stage in stages:
        rows = run_rows(stage, rows)
    return {row["key"]: row for row in rows}


def test_profile_resolves_with_bounded_threads(config):
    assert config.stages == ["detect", "edit"] and config.edit.editor == "classic"
    from unsafe2safe_ray.detectors.faces import threads_for

    # Detect actors x threads stays within 2 cores.
    assert config.detect.pool_size * threads_for(config.detect) <= 2
    # Actor pools reserve their CPUs up front; a 1-CPU read task must still fit on 2 CPUs.
    reserved = sum(s.pool_size * s.num_cpus for s in (config.detect, config.edit))
    assert reserved + 1.0 <= 2.0


def test_detect_fills_flag_regions_and_the_caption_triplet(processed):
    astronaut = processed["astronaut"]
    assert astronaut["privacy_flag"] is True
    assert astronaut["categories"] == ["people"]
    [face] = astronaut["regions"]
    assert face["category"] == "people" and face["source"] == "detector" and len(face["bbox"]) == 4
    assert astronaut["caption_source"] == "detector-template"
    assert "1 visible face" in astronaut["private_caption"]
    assert "face" in astronaut["public_caption"] and astronaut["edit_instruction"].startswith("Blur the face")


def test_text_goes_to_the_private_caption_only(processed):
    page = processed["page"]
    assert page["categories"] == ["text_and_symbols"]
    assert "segmentation" in page["private_caption"]
    # The row keeps the strings for the private table; the published copy (what the writer
    # puts in captions/) holds boxes and kinds only.
    assert any("segmentation" in (r.get("text") or "").lower() for r in page["regions"])
    published = records.public_regions(page["regions"])
    assert all("text" not in r and r["kind"] == "text" for r in published)
    for word in ("segmentation", "markers", "background"):
        assert word not in str(published).lower()
        assert word not in page["public_caption"].lower()
        assert word not in page["edit_instruction"].lower()
        assert word not in str(page["verification"]).lower()
    review = page["privacy_review"]
    # What is visible and why it is sensitive, as "visible: why" (no text content).
    assert review and all(": " in item and "segmentation" not in item for item in review)


def test_plate_becomes_a_plate_region(processed):
    plate = processed["licence_plate"]
    [region] = plate["regions"]
    assert region["kind"] == "licence_plate" and region["category"] == "text_and_symbols"
    assert "KX 482 TB" in plate["private_caption"] and "KX" not in plate["public_caption"]


def test_detect_keeps_the_strings_for_the_verifier(stages):
    [row] = stages[0].process([_row("licence_plate.jpg")])
    [region] = row["regions"]
    assert region["text"].replace(" ", "") == "KX482TB"


@pytest.mark.parametrize("key", ["astronaut", "camera", "page", "licence_plate", "id_card"])
def test_flagged_rows_are_edited_and_verified(processed, key):
    row = processed[key]
    assert row["status"] == records.EDITED, row["error"]
    assert row["editor"].startswith("classic")
    verification = row["verification"]
    assert verification["ok"] is True and verification["leaks"] == []
    assert verification["checks_run"] == ["faces", "text"] and verification["checks_skipped"] == []
    assert not np.array_equal(records.get_image(row), _rgb(f"{key}{Path(row['source_uri']).suffix}"))


@pytest.mark.parametrize("key", ["chelsea", "coffee"])
def test_negatives_pass_untouched(processed, key):
    row = processed[key]
    assert row["privacy_flag"] is False and row["regions"] == []
    assert row["status"] == records.PENDING  # the writer turns pending+unflagged into passed
    assert row["verification"] is None
    assert np.array_equal(records.get_image(row), _rgb(f"{key}.jpg"))


def test_edited_pixels_change_only_inside_the_dilated_regions(processed, config):
    from unsafe2safe_ray.editors.classic import ObscureSettings, obscure_mask

    row = processed["astronaut"]
    original = _rgb("astronaut.jpg")
    mask = obscure_mask(original.shape[:2], row["regions"], ObscureSettings.from_config(config.classic))
    edited = records.get_image(row)
    assert np.array_equal(edited[~mask], original[~mask])
    assert (edited[mask] != original[mask]).any(axis=-1).mean() > 0.5


def _edit_stage(config, *overrides: str):
    from unsafe2safe_ray.config import load_config as _load
    from unsafe2safe_ray.stages.edit import EditStage

    stage = EditStage(_load("cpu", overrides=list(overrides)))
    stage.setup()
    return stage


def _astronaut_with_face() -> dict:
    row = _row("astronaut.jpg")
    row.update(privacy_flag=True, regions=list([{"category": "people", "bbox": [181, 58, 270, 178]}]),
               categories=list(["people"]))
    return row


def test_a_leaking_edit_escalates_to_a_fill_of_the_leaking_region(config):
    # A blur far too light to hide the face (kernel 3 % of the face): the verifier still sees
    # the astronaut, so the edit escalates to a solid fill and then passes.
    stage = _edit_stage(config, "classic.blur_kernel_fraction=0.03")
    [row] = run_rows(stage, [_astronaut_with_face()])
    verification = row["verification"]
    assert row["status"] == records.EDITED, row["error"]
    assert verification["attempts"][0]["leaks"][0]["kind"] == "face_identity"
    assert verification["fallback"] == "fill" and verification["ok"] is True
    assert verification["checks"]["min_face_distance"] >= 0.6
    assert row["editor"] == "classic+fill"


def test_a_row_that_still_leaks_fails_without_pixels(config):
    stage = _edit_stage(config, "classic.blur_kernel_fraction=0.03", "edit.classic_fallback=false")
    [row] = run_rows(stage, [_astronaut_with_face()])
    assert row["status"] == records.FAILED and "face_identity" in row["error"]
    assert row["error_stage"] == "edit"
    assert row["image"] is None  # no pixels leave a failed row


def test_classic_edit_fails_a_flag_without_regions(stages):
    row = _row("coffee.jpg")
    row["privacy_flag"] = True
    [row] = run_rows(stages[1], [row])
    assert row["status"] == records.FAILED and "no regions" in row["error"]
    assert "edit.editor=flowedit" in row["error"]  # the error says what to change


def test_label_names_the_subject(stages):
    [row] = stages[0].process([_row("astronaut.jpg", label="astronaut")])
    assert row["private_caption"].startswith("A photo of an astronaut")
    assert row["public_caption"].startswith("A photo of an astronaut")


# ---------------------------------------------------------------------------------------------
# End to end: the cpu profile over examples/images through the real job driver.


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, ray_local):
    from unsafe2safe_ray.job import run_job

    out = tmp_path_factory.mktemp("cpu_e2e") / "out"
    # PNG output so that "passed pixel-identical" is checkable byte for byte after decoding.
    config = load_config("cpu", overrides=["io.output_format=png", "io.shard_size=4"])
    result = run_job(str(EXAMPLES), str(out), config, run_id="cpu_e2e")
    return out, result


def test_e2e_every_example_is_committed_with_the_right_status(cpu_run):
    from unsafe2safe_ray.output import open_output

    out, result = cpu_run
    captions = {Path(r["source_uri"]).stem: r for r in open_output(str(out)).captions().to_pylist()}
    assert sorted(captions) == ["astronaut", "camera", "chelsea", "coffee", "id_card", "licence_plate", "page"]
    for name in ("astronaut", "camera", "id_card", "licence_plate", "page"):
        assert captions[name]["status"] == "edited", captions[name]["error"]
        assert captions[name]["privacy_flag"] and captions[name]["verification"]["ok"]
    for name in ("chelsea", "coffee"):
        assert captions[name]["status"] == "passed" and not captions[name]["privacy_flag"]
    assert captions["licence_plate"]["categories"] == ["text_and_symbols"]
    assert captions["astronaut"]["caption_source"] == "detector-template"


def test_e2e_the_cat_passes_pixel_identical_and_faces_no_longer_match(cpu_run):
    from unsafe2safe_ray.detectors.verifier import PrivacyVerifier
    from unsafe2safe_ray.output import open_output

    out, _ = cpu_run
    samples = {Path(s["caption"]["source_uri"]).stem: s for s in open_output(str(out)).iter_samples()}
    assert np.array_equal(samples["chelsea"]["image"], _rgb("chelsea.jpg"))
    original = _rgb("astronaut.jpg")
    published = samples["astronaut"]["image"]
    assert published.shape == original.shape and not np.array_equal(published, original)
    # Independent re-check of the published file (after encoding): the identity is gone.
    report = PrivacyVerifier(load_config("cpu").verify).check(original, published, [])
    assert report.ok and report.checks["faces_checked"] == 1


def test_e2e_private_text_stays_in_the_private_table(cpu_run):
    from unsafe2safe_ray.output import open_output

    out, _ = cpu_run
    reader = open_output(str(out))
    public = json.dumps(reader.captions().to_pylist())
    private = json.dumps(reader.private().to_pylist())
    assert "KX 482 TB" in private and "JANE EXAMPLE" in private
    assert "KX 482 TB" not in public and "JANE EXAMPLE" not in public


def test_e2e_ray_stats_name_every_stage(cpu_run):
    _, result = cpu_run
    operators = " ".join(result.to_json()["operators"])
    # detect and edit share one actor pool in this profile (ray.colocate): one operator.
    for name in ("read_plan", "decode", "detect+edit", "write"):
        assert f"({name})" in operators, operators


def test_detect_settings_reach_the_verifier_too():
    """One face detector: the verifier scans the same scales as detect (its own score threshold)."""
    from unsafe2safe_ray.stages.detect import DetectStage
    from unsafe2safe_ray.stages.edit import EditStage

    cfg = load_config("cpu", overrides=["detect.face_zoom=0", "detect.small_faces=false",
                                        "detect.face_small_min_pixels=0", "detect.face_coarse_side=256"])
    detect, edit = DetectStage(cfg), EditStage(cfg)
    detect.setup()
    edit.setup()
    for faces in (detect.faces, edit.verifier.faces):
        assert (faces.zoom, faces.small, faces.small_face_min_pixels, faces.coarse_side) == (0, None, 0, 256)
    assert detect.faces.score_threshold == cfg.detect.face_score_threshold
    assert edit.verifier.faces.score_threshold == cfg.verify.face_score_threshold
