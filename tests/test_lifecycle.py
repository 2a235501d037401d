"""The run lifecycle of an output: one writer at a time, --break-lease, no silent config mix,
run ids never reused, a full disk, and the rerun advice on shard sizes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.cli import app
from unsafe2safe_ray.config import ConfigError, load_config
from unsafe2safe_ray.job import run_job
from unsafe2safe_ray.plan.planner import PlanError
from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.commits import read_commits
from unsafe2safe_ray.storage.layout import OutputLayout
from unsafe2safe_ray.storage.lease import LEASE_NAME, LeaseLostError, OutputLease

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _assert_exactly_once(out: Path, n: int) -> None:
    """Every input once in the committed output, and nothing on disk that no marker lists."""
    keys = sorted(r["key"] for r in open_output(str(out)).captions().to_pylist())
    assert keys == [f"{i:09d}" for i in range(n)]
    markers = read_commits(OutputLayout(str(out)))
    referenced = {f for m in markers.values() for fs in m["files"].values() for f in fs}
    on_disk = {f"{d}/{p.name}" for d in ("images", "captions", "private") for p in (out / d).iterdir()}
    assert on_disk == referenced
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name == LEASE_NAME]
    assert leftovers == []


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_second_concurrent_run_refuses_and_corrupts_nothing(tmp_path):
    write_good_images(tmp_path / "in", 8)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "unsafe2safe_ray", "run", "--input", str(tmp_path / "in"), "--output", str(out),
           "--profile", "none", "--shard-size", "2", "--run-id", "first", "--set", "stages=[testing.flag_all]",
           "--set", "io.read_batch_size=2", "--set", "io.write_batch_size=2", "--set", "ray.decode_num_cpus=0.5"]
    env = dict(os.environ, U2S_TEST_EDIT="invert", U2S_TEST_DELAY="0.1")
    env.pop("RAY_ADDRESS", None)
    first = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / LEASE_NAME).exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took the lease"
            time.sleep(0.05)
        second = runner.invoke(app, ["run", "--input", str(tmp_path / "in"), "--output", str(out),
                                     "--profile", "none", "--run-id", "second"])
        line = _one_line_error(second)
        assert "being written by run first" in line and "since" in line and "--break-lease" in line
        stdout, stderr = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert json.loads(stdout.strip().splitlines()[-1])["counts"]["edited"] == 8
    _assert_exactly_once(out, 8)
    assert {m["run_id"] for m in read_commits(OutputLayout(str(out))).values()} == {"first"}


@pytest.mark.usefixtures("ray_local")
def test_break_lease_cli(tmp_path):
    write_good_images(tmp_path / "in", 3)
    out = tmp_path / "out"
    fs, root = storage.filesystem(str(out))
    stuck = OutputLease(fs, root, "stuck", expiry_s=3600).acquire()  # alive, never finishing
    args = ["run", "--input", str(tmp_path / "in"), "--output", str(out), "--profile", "none", "--shard-size", "2"]
    assert "run stuck" in _one_line_error(runner.invoke(app, args))
    assert not (out / "_plan").exists()  # refused before touching anything
    result = runner.invoke(app, [*args, "--break-lease"])
    assert result.exit_code == 0, result.output
    with pytest.raises(LeaseLostError):
        stuck.refresh()
    _assert_exactly_once(out, 3)


@pytest.mark.usefixtures("ray_local")
def test_config_change_refused_unless_allowed_and_recorded(tmp_path):
    write_good_images(tmp_path / "in", 4)
    out = str(tmp_path / "out")
    before = load_config("none", overrides=["io.shard_size=2"])
    run_job(str(tmp_path / "in"), out, before, run_id="before")
    changed = load_config("none", overrides=["io.jpeg_quality=70"])  # no shard size: the plan's is used
    with pytest.raises(ConfigError) as e:
        run_job(str(tmp_path / "in"), out, changed, shards="all", run_id="changed")
    msg = str(e.value)
    assert "\n" not in msg and "--allow-config-change" in msg and before.digest() in msg
    assert {m["run_id"] for m in read_commits(OutputLayout(out)).values()} == {"before"}
    # Credentials, batching and the lease are not the config of the output: no refusal.
    same = load_config("none", overrides=["io.write_batch_size=3", "io.lease_expiry_s=30",
                                          'io.storage_options={"anon": false}', "edit.batch_size=2",
                                          "edit.pool_size=3", "detect.num_cpus=0.5",
                                          "detect.max_tasks_in_flight=1"])
    assert same.digest() == before.digest()
    assert run_job(str(tmp_path / "in"), out, same, run_id="same").selected_shards == []

    result = run_job(str(tmp_path / "in"), out, changed, shards="1", run_id="changed", allow_config_change=True)
    assert result.committed_shards == [1]
    markers = read_commits(OutputLayout(out))
    assert markers[1]["config_digest"] == changed.digest()
    assert markers[1]["previous_config_digests"] == [before.digest()]
    report = json.loads((tmp_path / "out" / "_runs" / "changed.json").read_text())
    assert report["config_digest"] == changed.digest() and report["previous_config_digests"] == [before.digest()]


@pytest.mark.usefixtures("ray_local")
def test_run_id_is_never_reused_and_shard_size_advice(tmp_path):
    write_good_images(tmp_path / "in", 3)
    out = str(tmp_path / "out")
    run_job(str(tmp_path / "in"), out, load_config("none", overrides=["io.shard_size=2"]), run_id="once")
    report = (tmp_path / "out" / "_runs" / "once.json").read_bytes()
    with pytest.raises(ValueError, match="run id 'once' was already used"):
        run_job(str(tmp_path / "in"), out, load_config("none"), shards="all", run_id="once")
    assert (tmp_path / "out" / "_runs" / "once.json").read_bytes() == report
    # A rerun without a shard size reuses the plan's; only a given, different one is refused.
    args = ["run", "--input", str(tmp_path / "in"), "--output", out, "--profile", "none"]
    assert runner.invoke(app, args).exit_code == 0
    line = _one_line_error(runner.invoke(app, [*args, "--shard-size", "5"]))
    assert "shard size 5" in line and "saved plan's 2" in line and "drop --shard-size" not in line
    with pytest.raises(PlanError, match="give no shard size"):
        run_job(str(tmp_path / "in"), out, load_config("none", overrides=["io.shard_size=3"]))


@pytest.mark.usefixtures("ray_local")
def test_disk_full_is_one_line_and_leaves_nothing_behind(tmp_path, monkeypatch):
    write_good_images(tmp_path / "in", 4)
    out = tmp_path / "out"
    real_write = storage._write_local

    def full_disk(path: str, data: bytes) -> None:
        if f"{os.sep}_commits{os.sep}" in path:
            with open(path, "wb") as f:  # the temp part gets a prefix, then the disk is full
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_write(path, data)

    monkeypatch.setattr(storage, "_write_local", full_disk)
    args = ["run", "--input", str(tmp_path / "in"), "--output", str(out), "--profile", "none", "--shard-size", "2"]
    line = _one_line_error(runner.invoke(app, args))
    assert line.startswith("error: no space left") and "rerun" in line
    assert not list(out.rglob(".tmp-*")) and not (out / LEASE_NAME).exists()
    monkeypatch.setattr(storage, "_write_local", real_write)
    # A temp part left by a write that was killed outright: the next run removes it.
    stale = out / "images" / ".tmp-0f0f-shard-00000-dead-0123456789.tar"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 60, time.time() - 60))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    _assert_exactly_once(out, 4)


@pytest.mark.usefixtures("ray_local")
def test_disk_full_in_a_worker_is_recognized_through_ray():
    """Workers write the parts: their ENOSPC reaches the driver wrapped by Ray Data."""
    import ray.data

    def full(batch):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/images/.tmp-1-shard-00000-r-0.tar")

    with pytest.raises(Exception) as e:
        ray.data.range(2, override_num_blocks=1).map_batches(full).materialize()
    assert not isinstance(e.value, OSError) or e.value.errno != errno.ENOSPC  # wrapped, not the OSError itself
    assert storage.no_space_error(e.value) is not None
    assert storage.no_space_error(ValueError("bad")) is None
