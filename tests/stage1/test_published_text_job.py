"""End to end through ``run_job``: fake VLM/LLM answers that copy a phone number, the plate that
OCR read and a name from the private caption into the public caption, the edit instruction and
the combined caption. No published file (captions Parquet, tar sidecars) may contain them."""

from __future__ import annotations

import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest

from unsafe2safe_ray import open_output, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.detectors.text import normalize_text
from unsafe2safe_ray.job import run_job

pytestmark = pytest.mark.usefixtures("ray_local")

PHONE = "+1 415-555-0132"
PLATE = "KX 482 TB"  # what examples/make_examples.py printed on the plate, and OCR reads
NAME = "Jane Example"
ANSWERS = [
    # The VLM calls both images safe: the detectors flag the plate (a safety net), and their OCR
    # reading is the evidence the instruction's lower-case "kx482tb" is matched against.
    {"privacy_flag": False, "categories": [], "privacy_review": [],
     "private_caption": f"{NAME} parks her red car with plate {PLATE}; her number is {PHONE}.",
     "public_caption": f"a red car with the plate {PLATE}; call {PHONE}"},
    {"edit_instruction": f"replace the plate kx482tb of {NAME} and the sticker reading 020 7946 0958",
     "combined_caption": f"a red car of Example with a new plate, call {PHONE}"},
]
SECRETS = (PHONE, "4155550132", PLATE, "kx482tb", "Example", "02079460958")


def _published_text(out) -> dict[str, str]:
    """Every published file's readable content: captions Parquet cells and tar sidecars."""
    texts = {}
    for path in (out / "captions").glob("*.parquet"):
        texts[path.name] = json.dumps(pq.read_table(path).to_pylist(), default=str)
    for path in (out / "images").glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    texts[f"{path.name}:{member.name}"] = tar.extractfile(member).read().decode()
    return texts


def test_copied_private_details_never_reach_published_files(tmp_path, sample_images):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("licence_plate.jpg", "coffee.jpg"):
        shutil.copy(sample_images / name, inputs / name)
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(ANSWERS))
    config = load_config("cpu", overrides=[
        "stages=[detect, caption, instruct, edit]", "detect.pool_size=1",
        "caption.engine=fake", f"caption.model={answers}", "caption.num_cpus=0.25",
        "instruct.engine=fake", f"instruct.model={answers}", "instruct.num_cpus=0.25",
        "instruct.combined_caption=true",
    ])
    assert config.publish.text_leaks.mode == "redact"
    out = tmp_path / "out"
    result = run_job(str(inputs), str(out), config)
    assert sum(result.counts.values()) == 2

    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in open_output(str(out)).captions().to_pylist()}
    plate_row, coffee_row = rows["licence_plate.jpg"], rows["coffee.jpg"]
    # The plate image was flagged by the detectors (its OCR text is the row's evidence) and
    # got an instruction; both rows had the planted public caption.
    assert plate_row["privacy_flag"] and plate_row["edit_instruction"] and plate_row["combined_caption"]
    for row in (plate_row, coffee_row):
        assert "[redacted]" in row["public_caption"], row["public_caption"]
        verification = row["verification"]
        assert verification["text_redactions"] >= 2
        assert "phone" in verification["text_leak_kinds"]
    kinds = plate_row["verification"]["text_leak_kinds"]
    assert "ocr_text" in kinds and "name" in kinds, kinds
    assert "[redacted]" in plate_row["edit_instruction"] and "[redacted]" in plate_row["combined_caption"]

    published = _published_text(out)
    assert any(name.endswith(".json") for name in published) and any(n.endswith(".parquet") for n in published)
    for name, text in published.items():
        for secret in SECRETS:
            assert secret.lower() not in text.lower(), (name, secret)
        assert normalize_text(PLATE) not in normalize_text(text), name
        assert "4155550132" not in normalize_text(text), name
    # The private table keeps what the model saw (never published).
    private = json.dumps([pq.read_table(p).to_pylist() for p in (out / "private").glob("*.parquet")])
    assert NAME in private
    assert coffee_row["status"] == records.PASSED and not coffee_row["edit_instruction"]
