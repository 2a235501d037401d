"""SIGKILL the driver mid-run, rerun, and check exactly-once output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.storage.commits import read_commits
from unsafe2safe_ray.storage.layout import OutputLayout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(out, run_id: str) -> list[str]:
    return [sys.executable, "-m", "unsafe2safe_ray", "run", "--input", str(out.parent / "in"),
            "--output", str(out), "--profile", "none", "--shard-size", "3", "--run-id", run_id,
            "--set", "stages=[testing.flag_all]", "--set", "io.read_batch_size=3", "--set", "io.write_batch_size=3"]


def test_sigkill_mid_run_then_rerun_is_exactly_once(tmp_path):
    n = 36
    write_good_images(tmp_path / "in", n)
    out = tmp_path / "out"
    env = dict(os.environ, U2S_TEST_EDIT="invert", U2S_TEST_DELAY="0.15")
    env.pop("RAY_ADDRESS", None)
    # Its own session, so the kill takes the driver and the local Ray it started.
    proc = subprocess.Popen(_cli(out, "killed"), env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commits = out / "_commits"
    deadline = time.time() + 240
    while time.time() < deadline and not (commits.exists() and len(list(commits.glob("*.json"))) >= 2):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)

    before = read_commits(OutputLayout(str(out)))
    assert 2 <= len(before) < n // 3, "kill must land mid-run"
    assert {m["run_id"] for m in before.values()} == {"killed"}

    env["U2S_TEST_DELAY"] = "0"
    rerun = subprocess.run(_cli(out, "resume"), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = read_commits(OutputLayout(str(out)))
    assert sorted(after) == list(range(n // 3))
    for shard, marker in before.items():  # committed shards were not recomputed
        assert after[shard]["run_id"] == "killed" and after[shard]["files"] == marker["files"]
    assert {after[s]["run_id"] for s in after if s not in before} == {"resume"}
    rows = open_output(str(out)).captions().to_pylist()
    keys = [r["key"] for r in rows]
    assert sorted(keys) == [f"{i:09d}" for i in range(n)]  # every input exactly once
    assert all(r["status"] == "edited" for r in rows)
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["counts"]["edited"] == n - 3 * len(before)
    # Parts of the killed run's unfinished shards were cleaned up, not left beside the new ones.
    referenced = {f for m in after.values() for fs in m["files"].values() for f in fs}
    on_disk = {f"{d}/{p.name}" for d in ("images", "captions", "private") for p in (out / d).iterdir()}
    assert on_disk == referenced
