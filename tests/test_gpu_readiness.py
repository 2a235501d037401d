"""Issue 14, outside Stage 1: what would break or silently degrade on a real GPU cluster, checked
on CPU. fp16 keeps T5's fp32 ``wo`` layers; the paper's race entropy (5 categories, ln 5) is the
one compared with the paper; the full-size benchmark builds its schedulers outside the device
context (a ``meta`` device stands in for CUDA: both fail ``np.array`` on a scheduler tensor);
without an address the CLI starts its own Ray on 127.0.0.1, and a dead address fails fast."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_fp16_keeps_t5_wo_in_fp32(tiny_models):
    import torch

    from unsafe2safe_ray.editors.flowedit_sd3 import FlowEditSD3Editor
    from unsafe2safe_ray.models import resolve_model_source

    editor = FlowEditSD3Editor(resolve_model_source("tiny://sd3"), dtype="float16", steps=4, n_max=3)
    t5 = editor.pipe.text_encoder_3
    wo = {n: p.dtype for n, p in t5.named_parameters() if ".wo." in n}
    assert wo and set(wo.values()) == {torch.float32}
    assert editor.pipe.transformer.dtype == torch.float16  # everything else in fp16


def test_paper_race_entropy_uses_five_categories():
    from unsafe2safe_ray.eval import judge

    # East and Southeast Asian are one category for the paper, two labels for the 7-label measure.
    labels = ["east_asian", "southeast_asian"] * 3
    assert judge.race_entropy_paper(labels) == 0.0
    assert judge.normalized_entropy(labels) == pytest.approx(math.log(2) / math.log(7))
    five = ["white", "black", "east_asian", "indian", "latino_hispanic"]
    assert judge.race_entropy_paper(five) == pytest.approx(1.0)
    assert judge.race_entropy_paper(["white", "black"]) == pytest.approx(math.log(2) / math.log(5))
    assert math.isnan(judge.race_entropy_paper(["none", None]))
    assert set(judge.PAPER_RACE_GROUPS) == set(judge.RACE_LABELS)


def test_only_the_paper_defined_race_entropy_is_compared_with_the_paper():
    from unsafe2safe_ray.eval.paper import PAPER_NUMBERS

    assert PAPER_NUMBERS["original"]["race_entropy_paper"] == 0.438
    assert PAPER_NUMBERS["U2S FlowEdit"]["race_entropy_paper"] == 0.765
    assert all("race_entropy" not in numbers for numbers in PAPER_NUMBERS.values())


_META_BENCHMARK = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("edit_throughput", sys.argv[1])
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
import unsafe2safe_ray.editors.base as base
from unsafe2safe_ray.config import load_config
base.torch_device_and_dtype = lambda preference: (torch.device("meta"), torch.float32)
pipe = bench.build_full_pipeline("instruct-pix2pix", 1, torch.device("meta"))
assert pipe.unet.device.type == "meta" and len(pipe.scheduler.betas) == 1000
config = load_config("tiny", overrides=["edit.editor=instruct-pix2pix"])
before = torch.get_default_dtype()
editor = bench.build_editor("instruct-pix2pix", config, True, 1)
assert editor.pipe.unet.device.type == "meta" and torch.get_default_dtype() == before
print("ok")
"""


def test_full_size_benchmark_builds_schedulers_outside_the_device_context(tiny_models):
    """The benchmark builds its models inside `with torch.device(device)`: on a meta device (no
    memory, no compute) a scheduler built inside fails exactly as on CUDA. Run in its own
    process: meta tensors must not leak into later tests' pipelines."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _META_BENCHMARK, str(REPO / "benchmarks" / "edit_throughput.py")],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_without_an_address_ray_starts_locally_on_loopback(monkeypatch):
    import ray

    from unsafe2safe_ray import job

    from ray._private import ray_constants, services

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    # The session's own Ray (other tests) would answer for the node address: resolve as a
    # fresh process would, with no node started yet.
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    # What the node's address resolves to while Ray starts (ray.init resolves it the same way).
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(
        dict(kwargs, resolved=services.resolve_ip_for_localhost(kwargs.get("_node_ip_address") or "localhost"))))
    job.init_ray(None)
    assert calls[0]["address"] == "local" and calls[0]["resolved"] == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is True  # switched back after the start


@pytest.mark.timeout(60)
def test_a_dead_address_fails_fast_with_one_line(monkeypatch):
    import socket

    import ray

    from unsafe2safe_ray import job

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    # The session's own Ray (other tests) would answer for the node address: resolve as a
    # fresh process would, with no node started yet.
    monkeypatch.setattr(ray._private.worker, "_global_node", None)
    monkeypatch.setattr(ray, "init", lambda **kwargs: None)
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        job.init_ray(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 30
    assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("RAY_ADDRESS", f"ray://127.0.0.1:{port}")
    with pytest.raises(ValueError, match="no Ray cluster answers"):
        job.init_ray(None)
