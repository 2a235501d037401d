"""Overhead of the output contract and memory growth, against a bare read-and-copy.

1. Overhead: `--profile none` (decode, normalize, re-encode, tar + Parquet parts, commits) vs a
   bare single-process loop that reads, decodes and re-encodes the same files into a folder.
2. Memory: driver and worker peak RSS for N and 10*N synthetic images (the target is flat:
   nothing proportional to the dataset may live on the driver).

    python benchmarks/bench_overhead_memory.py --images 1000
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synth(root: Path, n: int, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        arr = np.roll(base, i, axis=1)
        Image.fromarray(arr).save(d / f"{i:07d}.jpg", quality=90)


def bare_copy(src: Path, dst: Path) -> tuple[float, int]:
    """The simplest thing a user could write: read, decode, re-encode without metadata, write."""
    dst.mkdir()
    files = sorted(p for p in src.rglob("*.jpg"))
    start = time.perf_counter()
    for i, p in enumerate(files):
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=95)
        (dst / f"{i:09d}.jpg").write_bytes(buf.getvalue())
    return time.perf_counter() - start, len(files)


class WorkerPeak:
    """Samples the RSS of Ray worker processes while a job runs."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "ray::" in cmd or "default_worker.py" in cmd:
                    self.peak = max(self.peak, p.info["memory_info"].rss if p.info["memory_info"] else 0)
            time.sleep(0.2)

    def __enter__(self) -> "WorkerPeak":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def job(src: Path, out: Path, shard_size: int) -> tuple[float, int, int]:
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job

    cfg = load_config("none", overrides=[f"io.shard_size={shard_size}", "io.read_batch_size=64",
                                         "io.write_batch_size=128", "ray.decode_num_cpus=1"])
    with WorkerPeak() as peak:
        start = time.perf_counter()
        result = run_job(str(src), str(out), cfg, run_id="bench")
        secs = time.perf_counter() - start
    return secs, sum(result.counts.values()), peak.peak


def rss_mb(kb: int) -> float:
    return kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="N; the memory test also runs 10*N")
    parser.add_argument("--shard-size", type=int, default=500)
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from unsafe2safe_ray.job import init_ray

    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth(tmp / "warm", 50)
        job(tmp / "warm", tmp / "warm_out", args.shard_size)  # start workers before measuring
        results = []
        for n in (args.images, 10 * args.images):
            synth(tmp / f"in{n}", n)
            driver_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            secs, count, worker_peak = job(tmp / f"in{n}", tmp / f"out{n}", args.shard_size)
            driver_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            results.append((n, count, secs, driver_before, driver_after, worker_peak))
        bare_secs, bare_n = bare_copy(tmp / f"in{args.images}", tmp / "bare")

    n, count, secs = results[0][:3]
    print(f"\nOverhead of the contract ({n} synthetic 64x64 JPEGs, same files)")
    print(f"  bare read+decode+encode+write loop, 1 process : {bare_n / bare_secs:8.1f} img/s")
    print(f"  unsafe2safe run --profile none (local Ray)    : {count / secs:8.1f} img/s")
    print(f"  ratio job / bare                              : {(count / secs) / (bare_n / bare_secs):8.2f}")
    print("\nMemory (peak RSS)")
    print(f"  {'images':>7s} {'img/s':>7s} {'driver MB':>10s} {'worker MB':>10s}")
    for _n, count, secs, _before, after, worker in results:
        print(f"  {count:7d} {count / secs:7.1f} {rss_mb(after):10.1f} {worker / 2**20:10.1f}")
    d0, d1 = rss_mb(results[0][4]), rss_mb(results[1][4])
    w0, w1 = results[0][5] / 2**20, results[1][5] / 2**20
    print(f"  growth 10x images: driver {100 * (d1 - d0) / d0:+.1f} %, worker {100 * (w1 - w0) / max(w0, 1):+.1f} %")


if __name__ == "__main__":
    main()
