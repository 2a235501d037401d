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
    """detect, classic_edit, verify, each set up once (models load here)."""
    from unsafe2safe_ray.stages import load_stage_class

    built = [load_stage_class(name)(config) for name in config.stages]
    for stage in built:
        stage.setup()
    return built


@pytest.fixture(scope="module")
def processed(stages):
    """Every example image through the three stages, as the Ray adapter would run them."""
    rows = [_row(p.name) for p in sorted(EXAMPLES.iterdir()) if p.suffix in (".jpg", ".png")]
    for stage in stages:
        rows = run_rows(stage, rows)
    return {row["key"]: row for row in rows}


def test_profile_resolves_with_bounded_threads(config):
    assert config.stages == ["detect", "classic_edit", "verify"]
    from unsafe2safe_ray.detectors.faces import threads_for

    # Detect actors x threads stays within 2 cores.
    assert config.detect.pool_size * threads_for(config.detect) <= 2
    # Actor pools reserve their CPUs up front; a 1-CPU read task must still fit on 2 CPUs.
    reserved = sum(s.pool_size * s.num_cpus for s in (config.detect, config.verify))
    assert reserved + 1.0 <= 2.0


def test_detect_fills_flag_regions_and_the_caption_triplet(processed):
    astronaut = processed["astronaut"]
    assert astronaut["privacy_flag"] is True
    assert json.loads(astronaut["categories"]) == ["people"]
    [face] = json.loads(astronaut["regions"])
    assert face["category"] == "people" and face["source"] == "detector" and len(face["bbox"]) == 4
    assert astronaut["caption_source"] == "detector-template"
    assert "1 visible face" in astronaut["private_caption"]
    assert "face" in astronaut["public_caption"] and astronaut["edit_instruction"].startswith("Blur the face")


def test_text_goes_to_the_private_caption_only(processed):
    page = processed["page"]
    assert json.loads(page["categories"]) == ["text_and_symbols"]
    assert "segmentation" in page["private_caption"]
    # The row keeps the strings for the private table; the published copy (what the writer
    # puts in captions/) holds boxes and kinds only.
    assert any("segmentation" in (r.get("text") or "").lower() for r in json.loads(page["regions"]))
    published = records.public_regions(page["regions"])
    assert all("text" not in r and r["kind"] == "text" for r in json.loads(published))
    for word in ("segmentation", "markers", "background"):
        assert word not in published.lower()
        assert word not in page["public_caption"].lower()
        assert word not in page["edit_instruction"].lower()
        assert word not in page["verification"].lower()
    review = json.loads(page["privacy_review"])
    assert review and all({"visible", "why"} <= set(item) for item in review)


def test_plate_becomes_a_plate_region(processed):
    plate = processed["licence_plate"]
    [region] = json.loads(plate["regions"])
    assert region["kind"] == "licence_plate" and region["category"] == "text_and_symbols"
    assert "KX 482 TB" in plate["private_caption"] and "KX" not in plate["public_caption"]


def test_detect_keeps_the_strings_for_the_verifier(stages):
    [row] = stages[0].process([_row("licence_plate.jpg")])
    [region] = json.loads(row["regions"])
    assert region["text"].replace(" ", "") == "KX482TB"


@pytest.mark.parametrize("key", ["astronaut", "camera", "page", "licence_plate", "id_card"])
def test_flagged_rows_are_edited_and_verified(processed, key):
    row = processed[key]
    assert row["status"] == records.EDITED, row["error"]
    assert row["editor"].startswith("classic")
    assert row["original_image"] is None  # the original goes no further than verify
    verification = json.loads(row["verification"])
    assert verification["ok"] is True and verification["leaks"] == []
    assert not np.array_equal(records.get_image(row), _rgb(f"{key}{Path(row['source_uri']).suffix}"))


@pytest.mark.parametrize("key", ["chelsea", "coffee"])
def test_negatives_pass_untouched(processed, key):
    row = processed[key]
    assert row["privacy_flag"] is False and row["regions"] == "[]"
    assert row["status"] == records.PENDING  # the writer turns pending+unflagged into passed
    assert row["verification"] is None and row["original_image"] is None
    assert np.array_equal(records.get_image(row), _rgb(f"{key}.jpg"))


def test_edited_pixels_change_only_inside_the_dilated_regions(processed, config):
    from unsafe2safe_ray.editors.classic import ObscureSettings, obscure_mask

    row = processed["astronaut"]
    original = _rgb("astronaut.jpg")
    mask = obscure_mask(original.shape[:2], json.loads(row["regions"]), ObscureSettings.from_config(config.classic_edit))
    edited = records.get_image(row)
    assert np.array_equal(edited[~mask], original[~mask])
    assert (edited[mask] != original[mask]).any(axis=-1).mean() > 0.5


def _as_edited_by_someone_else(name: str, edited: np.ndarray, regions: list[dict], editor: str = "flowedit") -> dict:
    """A row as the diffusion edit stage leaves it: edited pixels plus original_image."""
    row = _row(name)
    records.set_image(row, _rgb(name), "original_image")
    records.set_image(row, edited)
    row.update(privacy_flag=True, status=records.EDITED, editor=editor, regions=json.dumps(regions),
               categories=json.dumps(sorted({r["category"] for r in regions})))
    return row


def _lightly_blurred_face():
    import cv2

    image = _rgb("astronaut.jpg")
    box = [181, 58, 270, 178]
    out = image.copy()
    out[box[1]:box[3], box[0]:box[2]] = cv2.GaussianBlur(image[box[1]:box[3], box[0]:box[2]], (7, 7), 0)
    return out, [{"category": "people", "bbox": box}]


def test_verify_escalates_a_leaking_edit_to_fill(stages):
    verify = stages[2]
    edited, regions = _lightly_blurred_face()
    [row] = verify.process([_as_edited_by_someone_else("astronaut.jpg", edited, regions)])
    verification = json.loads(row["verification"])
    assert row["status"] == records.EDITED
    assert verification["escalations"] == 1 and verification["first_leaks"][0]["kind"] == "face_identity"
    assert verification["ok"] is True and verification["checks"]["min_face_distance"] >= 0.6
    assert row["editor"] == "flowedit+fill" and row["original_image"] is None
    assert not np.array_equal(records.get_image(row), edited)


def test_verify_fails_a_row_that_still_leaks(config):
    from unsafe2safe_ray.stages.verify import VerifyStage

    strict = config.model_copy(update={"verify": config.verify.model_copy(update={"max_escalations": 0})})
    stage = VerifyStage(strict)
    stage.setup()
    edited, regions = _lightly_blurred_face()
    [row] = stage.process([_as_edited_by_someone_else("astronaut.jpg", edited, regions)])
    assert row["status"] == records.FAILED and "face_identity" in row["error"]
    assert row["image"] is None and row["original_image"] is None  # no pixels leave a failed row
    assert json.loads(row["verification"])["ok"] is False


def test_verify_fails_an_edit_without_its_original(stages):
    row = _row("astronaut.jpg")
    row.update(privacy_flag=True, status=records.EDITED, editor="flowedit")
    [row] = stages[2].process([row])
    assert row["status"] == records.FAILED and row["image"] is None


def test_classic_edit_fails_a_flag_without_regions(stages):
    row = _row("coffee.jpg")
    row["privacy_flag"] = True
    [row] = stages[1].process([row])
    assert row["status"] == records.FAILED and "no regions" in row["error"]


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
        assert captions[name]["privacy_flag"] and json.loads(captions[name]["verification"])["ok"]
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
