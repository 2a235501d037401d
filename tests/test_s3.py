"""The job against a real S3 protocol server (moto on 127.0.0.1), with s3fs unmocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _corpus import write_good_images
from unsafe2safe_ray import open_output
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.job import run_job, shard_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _upload(fs, local_root, bucket: str, prefix: str) -> None:
    for dirpath, _, files in os.walk(local_root):
        for f in files:
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, local_root)
            fs.put_file(full, f"{bucket}/{prefix}/{rel}")


@pytest.mark.usefixtures("ray_local")
def test_s3_input_and_output_via_storage_options(s3_server, s3_bucket, tmp_path):
    bucket, fs = s3_bucket
    write_good_images(tmp_path / "in", 5, classes=2)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"garbage")
    _upload(fs, tmp_path / "in", bucket, "data")
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    cfg = load_config("none", overrides=["io.shard_size=2", f"io.storage_options={json.dumps(options)}"])
    result = run_job(f"s3://{bucket}/data", f"s3://{bucket}/out", cfg, run_id="s3run")
    assert result.counts == {"edited": 0, "passed": 5, "failed": 1}
    assert sorted(fs.ls(f"{bucket}/out/_commits")) == [f"{bucket}/out/_commits/shard-0000{i}.json" for i in range(3)]
    assert fs.exists(f"{bucket}/out/_plan/plan.json") and fs.exists(f"{bucket}/out/_runs/s3run.json")
    reader = open_output(f"s3://{bucket}/out", options)
    rows = reader.captions().to_pylist()
    assert len(rows) == 6 and {r["label"] for r in rows} == {"class0", "class1", None}
    assert sum(1 for s in reader.iter_samples() if s["image"] is not None) == 5
    st = shard_status(f"s3://{bucket}/out", options)
    assert st["committed"] == [0, 1, 2]
    # A rerun against the same bucket finds everything committed.
    assert run_job(f"s3://{bucket}/data", f"s3://{bucket}/out", cfg).selected_shards == []


def test_cli_uses_standard_aws_environment_variables(s3_server, s3_bucket, tmp_path):
    bucket, fs = s3_bucket
    write_good_images(tmp_path / "in", 3, classes=1)
    _upload(fs, tmp_path / "in", bucket, "envdata")
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_server, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "unsafe2safe_ray", "run", "--input", f"s3://{bucket}/envdata",
           "--output", f"s3://{bucket}/envout", "--profile", "none", "--shard-size", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["counts"]["passed"] == 3
    status = subprocess.run([sys.executable, "-m", "unsafe2safe_ray", "status", f"s3://{bucket}/envout", "--json"],
                            env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert json.loads(status.stdout)["committed"] == [0, 1]
    # Unreachable storage: one line, exit 2, no traceback.
    bad = dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    proc = subprocess.run(cmd, env=bad, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot reach")
