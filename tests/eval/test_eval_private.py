"""``evaluate`` keeps private things private: the text read in the originals (a name, a date of
birth, a card number, a plate) and thumbnails of the originals appear in no public output file;
with ``--include-private`` they go to OUT/private/ only, and the public report says where."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unsafe2safe_ray.detectors.text import normalize_text

pytestmark = pytest.mark.usefixtures("ray_local")

# What examples/make_examples.py printed on the synthetic ID card and licence plate.
PLANTED = ("JANE EXAMPLE", "X7041962", "14.03.1981", "KX 482 TB")
SAMPLES = ("id_card.png", "licence_plate.jpg")


def _file_text(path: Path) -> str:
    """Everything a reader of ``path`` can see, as text (Parquet cells decoded, data URLs cut)."""
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]*", "", path.read_text(errors="replace"))


def _public_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file() and "private" not in p.relative_to(out).parts]


def _original_thumbnails(originals: Path, thumbnail_px: int = 160) -> list[bytes]:
    from unsafe2safe_ray.eval import images as imgs

    thumbs = []
    for name in SAMPLES:
        pixels = np.asarray(Image.open(originals / name).convert("RGB"))
        thumbs.append(imgs.thumbnail_jpeg(pixels, thumbnail_px, imgs.parse_regions("[]")))
    return thumbs


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, sample_images):
    from unsafe2safe_ray.eval.commands import evaluate

    root = tmp_path_factory.mktemp("eval_private")
    originals, marked = root / "originals", root / "marked"
    originals.mkdir()
    marked.mkdir()
    for name in SAMPLES:
        image = Image.open(sample_images / name).convert("RGB")
        image.save(originals / name)
        # An "anonymizer" that leaves the text readable (so the outputs' text is read too) but
        # changes pixels (so an output thumbnail never equals an original's).
        pixels = np.asarray(image).copy()
        pixels[:24, :24] = (255, 0, 255)
        Image.fromarray(pixels).save(marked / f"{Path(name).stem}.png")
    outs = {}
    for include_private in (True, False):
        out = root / f"report-{include_private}"
        evaluate(original=str(originals), anonymized=f"marked={marked}", out=str(out), metrics="text,fidelity",
                 clip_model=None, include_private=include_private)
        outs[include_private] = out
    return originals, outs


def test_public_outputs_hold_no_recognized_text(evaluated):
    _, outs = evaluated
    private = outs[True] / "private" / "per_image_private.parquet"
    read = " ".join(r["text_original"] or "" for r in pq.read_table(private).to_pylist())
    found = [s for s in PLANTED if normalize_text(s) in normalize_text(read)]
    assert len(found) >= 3, f"OCR read too little of the planted text to make this test meaningful: {found}"
    for out in outs.values():
        files = _public_files(out)
        assert {p.name for p in files} == {"per_image.parquet", "summary.json", "report.html"}
        for path in files:
            text = _file_text(path)
            for planted in PLANTED:
                assert planted.lower() not in text.lower(), (path.name, planted)
                assert normalize_text(planted) not in normalize_text(text), (path.name, planted)
        columns = pq.read_table(out / "per_image.parquet").column_names
        assert "text_original" not in columns and "text_anonymized" not in columns
        assert "text_sim_levenshtein" in columns  # the numbers stay public


def test_public_report_has_no_original_thumbnails_and_says_where_they_are(evaluated):
    originals, outs = evaluated
    thumbs = _original_thumbnails(originals)
    for include_private, out in outs.items():
        page = (out / "report.html").read_text()
        raw = b"".join(p.read_bytes() for p in _public_files(out))
        for thumb in thumbs:
            assert base64.b64encode(thumb).decode() not in page
            assert thumb not in raw
        assert "alt='original'" not in page
        assert page.count("data:image/jpeg;base64,") == len(SAMPLES)  # the outputs only
        note = page.split("id='privacy'>")[1].split("</p>")[0]
        assert "publishable" in note
        if include_private:
            assert "private/report_private.html" in note and "never publish" in note
        else:
            assert "--include-private" in note
            assert not (out / "private").exists()


def test_private_part_holds_text_and_thumbnails(evaluated):
    originals, outs = evaluated
    out = outs[True]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["private_outputs"] == ["private/per_image_private.parquet", "private/report_private.html"]
    assert json.loads((outs[False] / "summary.json").read_text())["private_outputs"] == []
    page = (out / "private" / "report_private.html").read_text()
    assert "PRIVATE: never publish" in page
    assert page.count("alt='original'") == len(SAMPLES)
    for thumb in _original_thumbnails(originals):  # the very bytes the public files must not hold
        assert base64.b64encode(thumb).decode() in page
    rows = pq.read_table(out / "private" / "per_image_private.parquet").to_pylist()
    assert {r["key"] for r in rows} == {Path(n).stem for n in SAMPLES}
    assert all(r["text_original"] for r in rows)
