"""The job end to end on local Ray: exactly once, fail closed, reruns, metadata, the reader."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from _corpus import write_corpus, write_good_images
from unsafe2safe_ray import open_output, records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job, shard_status
from unsafe2safe_ray.storage.commits import read_commits
from unsafe2safe_ray.storage.layout import OutputLayout

pytestmark = pytest.mark.usefixtures("ray_local")


def _config(*overrides: str, profile: str = "none"):
    # The hostile corpus expects the opt-in size limits (tiny.png, extreme_aspect.png fail).
    return load_config(profile, overrides=["io.shard_size=4", "io.read_batch_size=4", "io.min_side=8",
                                           "io.max_aspect_ratio=40", *overrides])


def _all_caption_rows(out: Path) -> list[dict]:
    return open_output(str(out)).captions().to_pylist()


def _tar_members(out: Path) -> dict[str, bytes]:
    members = {}
    for tar_path in sorted((out / "images").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar:
                members[m.name] = tar.extractfile(m).read()
    return members


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder of good and hostile images, run once with the pass-through profile."""
    root = tmp_path_factory.mktemp("mixed")
    expected = write_corpus(root / "in" / "corpus")
    write_good_images(root / "in", 5)
    out = root / "out"
    result = run_job(str(root / "in"), str(out), _config(), run_id="first")
    return root, out, expected, result


def test_none_profile_commits_every_input_exactly_once(mixed):
    root, out, expected, result = mixed
    n_inputs = len(expected) + 5
    rows = _all_caption_rows(out)
    assert sorted(r["key"] for r in rows) == [f"{i:09d}" for i in range(n_inputs)]
    st = shard_status(str(out))
    assert st["pending"] == [] and len(st["committed"]) == (n_inputs + 3) // 4
    assert sum(st["counts"].values()) == n_inputs == sum(result.counts.values())
    markers = read_commits(OutputLayout(str(out)))
    assert sum(m["counts"]["expected"] for m in markers.values()) == n_inputs
    for m in markers.values():
        c = m["counts"]
        assert c["edited"] + c["passed"] + c["failed"] == c["expected"]
        assert m["run_id"] == "first" and m["config_digest"] and "ray" in m["versions"]


def test_bad_files_are_failed_rows_with_their_reason(mixed):
    root, out, expected, _ = mixed
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in _all_caption_rows(out)}
    for name, want in expected.items():
        row = by_name[name]
        if want == "ok":
            assert row["status"] == records.PASSED, (name, row["error"])
        else:
            assert row["status"] == records.FAILED and want in row["error"], (name, row["error"])
            assert row["image_tar"] == ""


def test_tars_are_webdataset_samples_of_passed_rows_only(mixed):
    root, out, _, _ = mixed
    members = _tar_members(out)
    rows = {r["key"]: r for r in _all_caption_rows(out)}
    passed = {k for k, r in rows.items() if r["status"] == records.PASSED}
    keys_in_tar = {name.split(".")[0] for name in members}
    assert keys_in_tar == passed
    for key in passed:
        meta = json.loads(members[f"{key}.json"])
        assert meta["key"] == key and meta["status"] == "passed" and meta["privacy_flag"] is False
        assert meta["source_uri"] == rows[key]["source_uri"] and meta["label"] == rows[key]["label"]
        ext = "png" if f"{key}.png" in members else "jpg"
        img = Image.open(io.BytesIO(members[f"{key}.{ext}"]))
        assert img.size == (rows[key]["width"], rows[key]["height"])
    # lossless inputs stay lossless
    by_name = {r["source_uri"].rsplit("/", 1)[-1]: r for r in rows.values()}
    assert by_name["UPPER.PNG"]["image_member"].endswith(".png")
    assert by_name["good.jpg"]["image_member"].endswith(".jpg")
    # class folders become labels
    assert by_name["img00001.jpg"]["label"] == "class1" and by_name["good.jpg"]["label"] == "corpus"


def test_outputs_carry_no_source_metadata(mixed):
    root, out, _, _ = mixed
    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in _all_caption_rows(out)}
    data = _tar_members(out)[rows["gps.jpg"]["image_member"]]
    for secret in (b"SERIAL-123456", b"SecretCam", b"secret-comment", b"secret-xmp", b"Exif"):
        assert secret not in data
    assert not Image.open(io.BytesIO(data)).getexif()


def test_private_table_is_separate_and_complete(mixed):
    root, out, _, _ = mixed
    private = open_output(str(out)).private()
    assert sorted(private.column("key").to_pylist()) == sorted(r["key"] for r in _all_caption_rows(out))
    captions_cols = set(pq.read_schema(next((out / "captions").glob("*.parquet"))).names)
    assert not captions_cols & set(records.PRIVATE_FIELDS)


def test_rerun_is_a_noop_and_explicit_shards_replace_their_files(mixed, tmp_path):
    root, out, _, _ = mixed
    again = run_job(str(root / "in"), str(out), _config(), run_id="noop")
    assert again.selected_shards == [] and sum(again.counts.values()) == 0
    before = {p.name for p in (out / "images").glob("shard-00001-*")}
    redo = run_job(str(root / "in"), str(out), _config(), shards="1,2", run_id="redo")
    assert redo.committed_shards == [1, 2]
    after = {p.name for p in (out / "images").glob("shard-00001-*")}
    assert before and after and not before & after and all("-redo-" in n for n in after)
    markers = read_commits(OutputLayout(str(out)))
    assert markers[1]["run_id"] == "redo" and markers[0]["run_id"] == "first"
    keys = [r["key"] for r in _all_caption_rows(out)]
    assert len(keys) == len(set(keys)) == sum(m["counts"]["expected"] for m in markers.values())


def test_flagged_images_that_are_not_edited_are_never_written(tmp_path, monkeypatch):
    write_good_images(tmp_path / "in", 6)
    monkeypatch.setenv("U2S_TEST_EDIT", "none")  # flags everything, edits nothing
    result = run_job(str(tmp_path / "in"), str(tmp_path / "out"), _config("stages=[testing.flag_all]"))
    assert result.counts == {"edited": 0, "passed": 0, "failed": 6}
    assert _tar_members(tmp_path / "out") == {}
    rows = _all_caption_rows(tmp_path / "out")
    assert all("withheld" in r["error"] for r in rows)
    assert all(r["privacy_flag"] for r in rows)


def test_failed_edits_fail_closed_and_rerun_failed_repairs_them(tmp_path, monkeypatch):
    paths = write_good_images(tmp_path / "in", 8)
    originals = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    monkeypatch.setenv("U2S_TEST_EDIT", "fail")
    monkeypatch.setenv("U2S_TEST_FAIL_KEYS", "000000001,000000006")
    cfg = _config("stages=[testing.flag_all]")
    first = run_job(str(tmp_path / "in"), str(tmp_path / "out"), cfg, run_id="r1")
    assert first.counts == {"edited": 6, "passed": 0, "failed": 2}
    members = _tar_members(tmp_path / "out")
    assert "000000001.jpg" not in members and "000000006.jpg" not in members
    # No written image is an original: every one was inverted.
    for name, data in members.items():
        if name.endswith(".jpg"):
            written = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
            assert all(np.abs(written - o.astype(int)).mean() > 40 for o in originals)
    private = {r["key"]: r for r in open_output(str(tmp_path / "out")).private().to_pylist()}
    assert private["000000001"]["private_caption"] == "secret caption of 000000001"
    assert shard_status(str(tmp_path / "out"))["with_failures"] == [0, 1]

    monkeypatch.setenv("U2S_TEST_EDIT", "invert")
    second = run_job(str(tmp_path / "in"), str(tmp_path / "out"), cfg, shards="failed", run_id="r2")
    assert second.committed_shards == [0, 1]
    assert second.counts == {"edited": 8, "passed": 0, "failed": 0}
    assert shard_status(str(tmp_path / "out"))["with_failures"] == []
    samples = list(open_output(str(tmp_path / "out")).iter_samples())
    assert len(samples) == 8 and all(s["image"] is not None and s["caption"]["status"] == "edited" for s in samples)


def test_reader_ignores_uncommitted_files(mixed):
    root, out, _, _ = mixed
    reader = open_output(str(out))
    n_rows = reader.captions().num_rows
    stray = out / "captions" / "shard-00000-crashed-0000000000.parquet"
    stray.write_bytes((out / "captions").glob("*.parquet").__next__().read_bytes())
    try:
        assert open_output(str(out)).captions().num_rows == n_rows
        assert open_output(str(out)).dataset().count() == sum(1 for s in reader.iter_samples() if s["image"] is not None)
    finally:
        stray.unlink()


def test_run_report_has_totals_and_stage_times(mixed):
    root, out, _, result = mixed
    report = json.loads((out / "_runs" / "first.json").read_text())
    assert report["images"] == sum(result.counts.values())
    # Seconds per Ray operator, from Ray's own stats (operators are named after the stages).
    assert any("(decode)" in op and s > 0 for op, s in report["stage_seconds"].items())
    assert report["images_per_second"] > 0
    assert report["config"]["profile"] == "none"


def test_published_regions_carry_no_recognized_text(tmp_path):
    from unsafe2safe_ray.stages.write import WriteStage

    stage = WriteStage(_config(), OutputLayout(str(tmp_path)), "r")
    row = records.new_row("000000000", 0, "file:///x.jpg", None, 1)
    records.set_image(row, np.zeros((8, 8, 3), np.uint8))
    row.update(status=records.EDITED, privacy_flag=True,
               regions=list([{"category": "text_and_symbols", "bbox": [0, 0, 4, 4], "text": "KX 482 TB"}]))
    sample = stage.to_sample(row)
    assert sample.caption_row["regions"] == [{"category": "text_and_symbols", "bbox": [0, 0, 4, 4]}]
    assert sample.private_row["regions"][0]["text"] == "KX 482 TB"


def test_actor_pools_that_starve_the_read_tasks_are_refused(tmp_path):
    from unsafe2safe_ray.config import ConfigError

    write_good_images(tmp_path / "in", 2)
    cfg = _config("stages=[detect, edit]", "detect.pool_size=2", "detect.num_cpus=1")
    with pytest.raises(ConfigError, match="actor pools reserve"):
        run_job(str(tmp_path / "in"), str(tmp_path / "out"), cfg)
