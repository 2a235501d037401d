"""``evaluate`` streams: pairs come from Ray read tasks over committed parts, and the driver keeps
bounded state (running sums, fixed-bin histograms, a worst-k gallery) whose numbers equal those
of the whole table."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from unsafe2safe_ray.eval.options import EvalOptions
from unsafe2safe_ray.eval.report import Gallery, _badness
from unsafe2safe_ray.eval.runner import Histogram, summarize


def _random_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def maybe(value):
        return rng.choice([value, value, value, None, math.nan])

    rows = []
    for i in range(n):
        faces = rng.randint(0, 3)
        sims = [maybe(rng.random()) for _ in range(faces)]
        rows.append({
            "method": "m", "key": f"{i:05d}", "source_uri": f"/in/{i}.jpg",
            "status": rng.choice(["edited", "passed", "failed"]), "eval_error": rng.choice([None, None, '{"x": 1}']),
            "thumb_original": b"o%d" % i, "thumb_anonymized": b"a%d" % i,
            "face_count_original": faces, "face_count_redetected": sum(s is not None for s in sims),
            "face_identity_matches": rng.randint(0, faces), "face_best_similarities": sims,
            "face_sim": maybe(rng.random()), "face_embedder": "dlib",
            "text_sim_token_set": maybe(rng.random()), "text_sim_levenshtein": rng.random(), "text_cer": rng.random() * 1.2,
            "ssim": maybe(rng.random()), "psnr": rng.random() * 70, "phash_distance": rng.randint(0, 64),
        })
    return rows


def test_method_stats_equal_the_whole_table_in_any_order():
    rows = _random_rows(400)
    options = EvalOptions(metrics=("faces", "text", "fidelity"))
    summary = summarize(rows, options)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    other = summarize(shuffled, options)
    for key, value in summary.items():
        assert other[key] == (pytest.approx(value) if isinstance(value, float) else value), key

    def mean(values):
        finite = [v for v in values if v is not None and not math.isnan(v)]
        return float(np.mean(finite)) if finite else None

    pooled = [s for r in rows for s in r["face_best_similarities"]]
    faces = sum(r["face_count_original"] for r in rows)
    assert summary["images_total"] == summary["images_scored"] == 400
    assert summary["images_without_output"] == sum(r["status"] == "failed" for r in rows)
    assert summary["face_sim"] == pytest.approx(mean(pooled))
    assert summary["face_skipped_by_paper_rate"] == pytest.approx(
        sum(s is None or math.isnan(s) for s in pooled) / faces)
    assert summary["face_redetection_rate"] == pytest.approx(sum(r["face_count_redetected"] for r in rows) / faces)
    with_text = [r for r in rows if r["text_sim_token_set"] is not None]
    assert summary["text_images"] == len(with_text)
    assert summary["text_cer"] == pytest.approx(mean([r["text_cer"] for r in with_text]))
    assert summary["ssim"] == pytest.approx(mean([r["ssim"] for r in rows]))
    assert summary["phash_distance"] == pytest.approx(mean([r["phash_distance"] for r in rows]))
    # Histograms count every finite value once, outliers apart (CER above 1, PSNR above 60 dB).
    hist = summary["histograms"]
    assert hist["face_sim"]["n"] == sum(s is not None and not math.isnan(s) for s in pooled)
    assert hist["text_cer"]["n"] == len(with_text) and hist["text_cer"]["above"] == sum(
        r["text_cer"] > 1 for r in with_text)
    assert hist["psnr"]["above"] == sum(r["psnr"] > 60 for r in rows)
    assert "vlm_score" not in hist and "clip_score" not in hist  # families not selected


def test_histogram_bins_and_bounds():
    hist = Histogram(0.0, 1.0, 4)
    for value in (0.0, 0.24, 0.25, 0.99, 1.0, -0.1, 1.5, math.nan, None):
        hist.add(value)
    assert hist.to_dict() == {"low": 0.0, "high": 1.0, "counts": [2, 1, 0, 2], "below": 1, "above": 1, "n": 7}


def test_gallery_keeps_the_worst_k_with_bounded_rows():
    rows = _random_rows(500, seed=2)
    gallery = Gallery(limit=7)
    held = 0
    for row in rows:
        gallery.add(row)
        held = max(held, len(gallery._rows))
    assert held <= 14 and gallery.count == 500
    expected = [r["key"] for r in sorted(rows, key=_badness)[:7]]
    assert [r["key"] for r in gallery.rows()] == expected
    # The public gallery never holds the originals' thumbnails; the private one does.
    assert all("thumb_original" not in r for r in gallery.rows())
    private = Gallery(limit=7, keep_originals=True)
    for row in reversed(rows):
        private.add(row)
    assert [r["key"] for r in private.rows()] == expected
    assert all(r["thumb_original"] for r in private.rows())


@pytest.fixture(scope="module")
def output(tmp_path_factory, sample_images, ray_local):
    """A pass-through output of the samples in several shards (so several committed parts)."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job

    root = tmp_path_factory.mktemp("eval_streaming")
    originals = root / "originals"
    originals.mkdir()
    for path in sorted(sample_images.iterdir()):
        if path.suffix in (".jpg", ".png"):
            shutil.copy(path, originals / path.name)
    run_job(str(originals), str(root / "passthrough"), load_config("none", overrides=["io.shard_size=3"]))
    return originals, root / "passthrough"


def test_pair_dataset_reads_committed_parts_like_the_reader(output):
    from unsafe2safe_ray.eval.pairs import build_pairs, pair_dataset
    from unsafe2safe_ray.output import open_output

    originals, out = output
    reader = open_output(str(out))
    parts = reader.parts()
    assert len(parts) >= 2
    assert [s["key"] for p in parts for s in reader.iter_part(p)] == [s["key"] for s in reader.iter_samples()]
    methods = {"passthrough": str(out), "folder": str(originals)}
    streamed = pair_dataset(str(originals), methods).take_all()
    expected = build_pairs(str(originals), methods)
    def key(row):
        return row["method"], row["key"]

    assert sorted(streamed, key=key) == sorted(expected, key=key)


def test_evaluate_streams_into_tables_and_a_bounded_gallery(output, tmp_path, monkeypatch):
    from unsafe2safe_ray.eval import report
    from unsafe2safe_ray.eval.runner import evaluate_outputs

    originals, out = output
    monkeypatch.setattr(report, "GALLERY_LIMIT", 2)
    images = len(list(originals.iterdir()))
    summary = evaluate_outputs(str(originals), {"passthrough": str(out)}, str(tmp_path / "eval"),
                               EvalOptions(metrics=("fidelity",)))
    rows = pq.read_table(tmp_path / "eval" / "per_image.parquet").to_pylist()
    assert [r["key"] for r in rows] == sorted(r["key"] for r in rows)  # pair order kept
    assert len(rows) == summary["images_total"] == summary["images_scored"] == images
    assert summary["histograms"]["ssim"]["n"] == images and summary["ssim"] > 0.95
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["histograms"] == summary["histograms"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert f"worst privacy first, 2 of {images}" in page and page.count("data:image/jpeg;base64,") == 2
    assert "id='histograms'" in page
    assert not [p.name for p in (tmp_path / "eval").iterdir() if p.name.startswith(".tmp-")]
