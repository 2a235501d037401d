"""Run by tests/test_node_loss.py in its own process: a job on a two-node local Ray cluster
whose worker node is removed mid-run, then (if needed) a rerun. Prints one line: OUTCOME <json>."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from unsafe2safe_ray import open_output
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job
from unsafe2safe_ray.storage.commits import read_commits
from unsafe2safe_ray.storage.layout import OutputLayout


def main(input_dir: str, out: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = load_config("none", overrides=["io.shard_size=2", "io.read_batch_size=2", "io.write_batch_size=2",
                                         "stages=[testing.flag_all]", "ray.decode_num_cpus=0.25",
                                         "ray.write_num_cpus=0.25"])
    layout = OutputLayout(out)
    outcome: dict = {}

    def first_run() -> None:
        try:
            outcome["first"] = run_job(input_dir, out, cfg, run_id="first").to_json()
        except Exception as e:  # noqa: BLE001 - reported, then the rerun finishes the job
            outcome["first_error"] = f"{type(e).__name__}: {e}"[:500]

    thread = threading.Thread(target=first_run, daemon=True)
    thread.start()
    deadline = time.time() + 40
    while time.time() < deadline and thread.is_alive() and len(read_commits(layout) if Path(out, "_commits").exists() else {}) < 1:
        time.sleep(0.05)
    outcome["committed_before_loss"] = len(read_commits(layout))
    cluster.remove_node(worker)
    outcome["node_removed"] = True
    thread.join(timeout=60)
    outcome["first_finished"] = not thread.is_alive()
    if thread.is_alive() or "first_error" in outcome or outcome["first"]["incomplete_shards"]:
        outcome["rerun"] = run_job(input_dir, out, cfg, run_id="rerun").to_json()
    outcome["keys"] = [r["key"] for r in open_output(out).captions().to_pylist()]
    outcome["statuses"] = sorted({r["status"] for r in open_output(out).captions().to_pylist()})
    outcome["errors"] = sorted({r["error"] or "" for r in open_output(out).captions().to_pylist()})[:3]
    markers = read_commits(layout)
    referenced = {f for m in markers.values() for fs in m["files"].values() for f in fs}
    outcome["unreferenced"] = sorted(
        f"{d}/{p.name}" for d in ("images", "captions", "private") for p in Path(out, d).iterdir()
        if f"{d}/{p.name}" not in referenced)
    print("OUTCOME " + json.dumps(outcome), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
