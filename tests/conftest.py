"""Shared fixtures: one local Ray per session, a real moto S3 server on 127.0.0.1, tiny models
built once per session, and the sample images."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"

# Keep every library offline and quiet: nothing may leave loopback.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Tiny models persist under the repo's .cache (gitignored), so local reruns skip the builds.
# Set before Ray starts so that workers inherit it.
os.environ.setdefault("U2S_TINY_DIR", str(REPO / ".cache" / "tiny"))
# Test-only stages live in tests/_stages.py, outside the package: register them by name and put
# tests/ on PYTHONPATH, both before Ray starts, so that Ray workers and CLI subprocesses (which
# inherit this environment) import them too.
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")]))
os.environ["U2S_EXTRA_STAGES"] = "testing.flag_all=_stages:FlagAllStage"


@pytest.fixture(scope="session")
def ray_local():
    """A single-node local Ray shared by the whole session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a new Ray of this session's own, never one that another
        # process (the node-loss test's cluster, a developer's `ray start`) left its address for.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real moto S3 server on 127.0.0.1; yields its endpoint URL. AWS env vars point at it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    old = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh bucket on the moto server; yields (bucket name, s3fs filesystem)."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing",
                           client_kwargs={"endpoint_url": s3_server, "region_name": "us-east-1"})
    import boto3

    name = f"b{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield name, fs


@pytest.fixture(scope="session")
def tiny_models():
    """Build every tiny random-weight model once per session; yields the root directory.

    The ``tiny`` profile resolves ``tiny://name`` under ``$U2S_TINY_DIR``, so Ray workers started
    after this fixture find the same models.
    """
    from unsafe2safe_ray.models import resolve_model_source
    from unsafe2safe_ray.tiny_models import BUILDERS, tiny_root

    for name in BUILDERS:
        resolve_model_source(f"tiny://{name}")
    return tiny_root()


@pytest.fixture(scope="session")
def sample_images() -> Path:
    return EXAMPLES
