"""A worker node removed mid-run from a two-node local Ray cluster: nothing lost, nothing twice.

Runs in its own process (``_node_loss_job.py``): a process holds one Ray connection, and this
one is a multi-node cluster, not the session's single-node Ray.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from _corpus import write_good_images

HERE = Path(__file__).resolve().parent


def test_worker_node_lost_mid_run_is_exactly_once(tmp_path):
    n = 16
    write_good_images(tmp_path / "in", n)
    env = dict(os.environ, U2S_TEST_EDIT="invert", U2S_TEST_DELAY="0.15",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(HERE / "_node_loss_job.py"), str(tmp_path / "in"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=180, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("OUTCOME ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    outcome = json.loads(lines[-1][len("OUTCOME "):])
    print(outcome)
    assert outcome["node_removed"] and outcome["committed_before_loss"] < n // 2, outcome
    assert sorted(outcome["keys"]) == [f"{i:09d}" for i in range(n)], outcome  # every input exactly once
    assert outcome["statuses"] == ["edited"], outcome
    assert outcome["unreferenced"] == []
