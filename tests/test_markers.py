"""Commit markers are data, not paths: tampered entries are refused before anything is read or
deleted, locally and on a real S3 protocol server (moto)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.cli import app
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job, shard_status
from unsafe2safe_ray.storage import commits
from unsafe2safe_ray.storage.layout import OutputLayout


def _config(*overrides: str):
    return load_config("none", overrides=["io.shard_size=2", "io.read_batch_size=2", *overrides])


def _marker(files: dict[str, list[str]], shard: int = 0) -> dict:
    return {"shard": shard, "run_id": "r", "counts": {"expected": 1, "edited": 0, "passed": 1, "failed": 0},
            "files": files, "config_digest": "d", "versions": {}}


GOOD = {"images": ["images/shard-00000-r-abc.tar"], "captions": ["captions/shard-00000-r-abc.parquet"],
        "private": ["private/shard-00000-r-abc.parquet"]}


@pytest.mark.parametrize("kind, entry, why", [
    ("images", "../x", "'..'"),
    ("images", "images/../../x.tar", "'..'"),
    ("images", "/etc/passwd", "absolute"),
    ("images", "/other-bucket/shard-00000-r-abc.tar", "absolute"),
    ("images", "s3://other-bucket/images/shard-00000-r-abc.tar", "scheme"),
    ("images", "file:///tmp/shard-00000-r-abc.tar", "scheme"),
    ("images", "C:/x/shard-00000-r-abc.tar", "scheme"),
    ("images", "images\\shard-00000-r-abc.tar", "non-portable"),
    ("images", "_plan/plan.json", "data folders"),
    ("images", "images/sub/shard-00000-r-abc.tar", "data folders"),
    ("images", "captions/shard-00000-r-abc.parquet", "listed as 'images'"),
    ("images", "images/notes.txt", "not a data file name"),
    ("captions", "captions/shard-00001-r-abc.parquet", "shard 1, not of shard 0"),
    ("images", 7, "not a file name"),
])
def test_validate_marker_refuses_entries_outside_the_data_folders(tmp_path, kind, entry, why):
    layout = OutputLayout(str(tmp_path / "out"))
    assert commits.validate_marker(layout, _marker(GOOD)) is not None
    files = {k: list(v) for k, v in GOOD.items()}
    files[kind].append(entry)
    with pytest.raises(commits.MarkerError, match=r"shard-00000\.json") as e:
        commits.validate_marker(layout, _marker(files))
    assert why in str(e.value) and repr(entry) in str(e.value)


def test_validate_marker_refuses_malformed_markers(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    for bad in ([], {"shard": "0", "counts": {}, "files": {}}, _marker({"bogus": []}),
                _marker({"images": "images/shard-00000-r-abc.tar"}),
                dict(_marker(GOOD), file_info={"images/x.tar": {"size": 1}}),
                dict(_marker(GOOD), file_info={"images/shard-00000-r-abc.tar": {"size": -1}})):
        with pytest.raises(commits.MarkerError):
            commits.validate_marker(layout, bad)
    # A marker whose file name says another shard.
    with pytest.raises(commits.MarkerError, match="not the shard its file name says"):
        commits.validate_marker(layout, _marker(GOOD), source=layout.commit(3))


def test_remove_files_refuses_names_outside_the_output(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out" / "images").mkdir(parents=True)
    ok = tmp_path / "out" / "images" / "shard-00000-r-abc.tar"
    ok.write_bytes(b"x")
    with pytest.raises(commits.MarkerError, match="refusing to delete"):
        commits.remove_files(layout, {"images/shard-00000-r-abc.tar", "../victim.txt"})
    assert victim.exists() and ok.exists()  # nothing was deleted
    commits.remove_files(layout, {"images/shard-00000-r-abc.tar"})
    assert not ok.exists()


def _tamper(marker_path: Path, kind: str, entry: str) -> None:
    marker = json.loads(marker_path.read_text())
    marker["files"][kind].append(entry)
    marker_path.write_text(json.dumps(marker))


@pytest.fixture()
def small_run(tmp_path, ray_local):
    write_good_images(tmp_path / "in", 4)
    out = tmp_path / "out"
    run_job(str(tmp_path / "in"), str(out), _config(), run_id="first")
    return tmp_path, out


def test_tampered_local_markers_delete_nothing_and_name_the_marker(small_run):
    tmp_path, out = small_run
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    outside = tmp_path / "outside-shard-00000-x-y.tar"
    outside.write_text("keep me too")
    marker0 = out / "_commits" / "shard-00000.json"
    _tamper(marker0, "images", "../victim.txt")
    _tamper(marker0, "captions", str(outside))
    refused = r"shard-00000\.json: refusing entry '(\.\./victim\.txt|/.*outside.*)'"
    with pytest.raises(commits.MarkerError, match=refused):
        run_job(str(tmp_path / "in"), str(out), _config(), shards="0", run_id="again")
    assert victim.read_text() == "keep me" and outside.read_text() == "keep me too"
    with pytest.raises(commits.MarkerError, match=r"shard-00000\.json"):
        open_output(str(out))
    with pytest.raises(commits.MarkerError, match=r"shard-00000\.json"):
        shard_status(str(out))
    # The CLI turns it into one line and exit code 2.
    runner = CliRunner()
    for args in (["status", str(out)],
                 ["run", "--input", str(tmp_path / "in"), "--output", str(out), "--profile", "none", "--shards", "0"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "shard-00000.json" in result.output
        assert [line for line in result.output.splitlines() if line.startswith("error:")]
    assert victim.exists() and outside.exists()


def test_a_marker_naming_another_shards_file_is_refused(small_run):
    tmp_path, out = small_run
    other = sorted((out / "captions").glob("shard-00001-*.parquet"))[0].name
    _tamper(out / "_commits" / "shard-00000.json", "captions", f"captions/{other}")
    with pytest.raises(commits.MarkerError, match=r"shard-00000\.json.*a file of shard 1, not of shard 0"):
        open_output(str(out)).captions()
    with pytest.raises(commits.MarkerError):
        run_job(str(tmp_path / "in"), str(out), _config(), shards="0", run_id="again")
    assert (out / "captions" / other).exists()


def test_a_marker_that_is_not_json_is_named(small_run):
    tmp_path, out = small_run
    (out / "_commits" / "shard-00001.json").write_text("{not json")
    with pytest.raises(commits.MarkerError, match=r"shard-00001\.json: not valid JSON"):
        open_output(str(out))


@pytest.mark.usefixtures("ray_local")
def test_s3_marker_naming_another_bucket_deletes_nothing_there(s3_server, s3_bucket, tmp_path):
    import boto3

    bucket, fs = s3_bucket
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    other = bucket + "-other"
    s3.create_bucket(Bucket=other)
    for key in ("victim.tar", "images/shard-00000-r-abc.tar"):
        s3.put_object(Bucket=other, Key=key, Body=b"someone else's data")
    write_good_images(tmp_path / "in", 4)
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    cfg = _config(f"io.storage_options={json.dumps(options)}")
    out = f"s3://{bucket}/out"
    run_job(str(tmp_path / "in"), out, cfg, run_id="first")
    marker_key = "out/_commits/shard-00000.json"
    pristine = s3.get_object(Bucket=bucket, Key=marker_key)["Body"].read()
    for entry in (f"/{other}/victim.tar", f"s3://{other}/images/shard-00000-r-abc.tar",
                  f"../../{other}/victim.tar"):
        marker = json.loads(pristine)
        marker["files"]["images"].append(entry)
        s3.put_object(Bucket=bucket, Key=marker_key, Body=json.dumps(marker).encode())
        fs.invalidate_cache()
        with pytest.raises(commits.MarkerError, match=r"shard-00000\.json"):
            run_job(str(tmp_path / "in"), out, cfg, shards="0", run_id="again")
        with pytest.raises(commits.MarkerError):
            open_output(out, options)
        names = {o["Key"] for o in s3.list_objects_v2(Bucket=other).get("Contents", [])}
        assert names == {"victim.tar", "images/shard-00000-r-abc.tar"}, entry
    # Restored, the marker works again and a rerun replaces shard 0 cleanly.
    s3.put_object(Bucket=bucket, Key=marker_key, Body=pristine)
    fs.invalidate_cache()
    assert run_job(str(tmp_path / "in"), out, cfg, shards="0", run_id="again").committed_shards == [0]
    assert len({o["Key"] for o in s3.list_objects_v2(Bucket=other)["Contents"]}) == 2
    # Sizes and checksums hold on S3 too.
    st = shard_status(out, options, verify=True)
    assert st["committed"] == [0, 1] and st["damaged"] == [] and st["unverifiable"] == []
