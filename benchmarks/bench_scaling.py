"""Scaling: the cpu profile's per-image work as a bare single-process loop vs the Ray job.

Same images, same run. The bare loop calls the very same stage code (decode, detect, classic
edit, verify, encode) in one process, once with one onnxruntime thread and once with one thread
per core; the job runs `unsafe2safe run --profile cpu` on local Ray with all cores. Prints
images/s, the ratio against the faster bare loop, and where the job's time went (per-stage
seconds from `_runs/<run_id>.json`).

    python benchmarks/bench_scaling.py --copies 8        # 7 sample images x 8 = 56 images
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_inputs(root: Path, copies: int) -> int:
    src = sorted((REPO / "examples" / "images").glob("*.[jp][pn]g"))
    for c in range(copies):
        for p in src:
            shutil.copy(p, root / f"{p.stem}_{c:03d}{p.suffix}")
    return len(src) * copies


def bare_loop(input_dir: Path, threads: int) -> tuple[float, int]:
    """Decode -> detect -> classic edit -> verify -> encode, one image at a time, no Ray."""
    from unsafe2safe_ray import records
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.imaging import encode_image
    from unsafe2safe_ray.stages import load_stage_class
    from unsafe2safe_ray.stages.base import run_rows
    from unsafe2safe_ray.stages.decode import DecodeStage
    from unsafe2safe_ray.stages.write import finalize

    cfg = load_config("cpu", overrides=[f"detect.threads={threads}", f"verify.threads={threads}"])
    stages = [DecodeStage(cfg)] + [load_stage_class(n)(cfg) for n in cfg.stages]
    for s in stages:
        s.setup()
    files = sorted(input_dir.iterdir())
    start = time.perf_counter()
    for i, path in enumerate(files):
        row = {"key": f"{i:09d}", "shard": 0, "source_uri": str(path), "label": None}
        rows = [row]
        for s in stages:
            rows = run_rows(s, rows)  # the same per-row failure handling the job uses
        row = finalize(rows[0])
        if row["status"] != records.FAILED:
            encode_image(records.get_image(row), "jpg", 95)
    return time.perf_counter() - start, len(files)


def ray_job(input_dir: Path, out_dir: Path, run_id: str = "bench", overrides: tuple[str, ...] = ()) -> tuple[float, int, dict]:
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import init_ray, run_job

    init_ray()
    cfg = load_config("cpu", overrides=["io.read_batch_size=4", "io.write_batch_size=8", *overrides])
    # Warm-up on a copy of one image, so actor start-up is not billed to throughput.
    warm = input_dir.parent / "warm"
    warm.mkdir(exist_ok=True)
    shutil.copy(next(input_dir.iterdir()), warm / "w.jpg")
    run_job(str(warm), str(out_dir.parent / "warm_out"), cfg)
    start = time.perf_counter()
    result = run_job(str(input_dir), str(out_dir), cfg, run_id=run_id)
    seconds = time.perf_counter() - start
    report = json.loads((out_dir / "_runs" / f"{run_id}.json").read_text())
    return seconds, sum(result.counts.values()), report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="config override for the Ray job, e.g. detect.pool_size=1")
    parser.add_argument("--skip-bare", action="store_true", help="only the Ray job (tuning runs)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        n = make_inputs(tmp / "in", args.copies)
        rows = []
        for threads in ([] if args.skip_bare else sorted({1, cores})):
            secs, count = bare_loop(tmp / "in", threads)
            rows.append((f"bare loop, 1 process, {threads} ORT thread(s)", count, secs))
        secs, count, report = ray_job(tmp / "in", tmp / "out", overrides=tuple(args.overrides))
        rows.append((f"Ray job, cpu profile, {cores} cores", count, secs))
        # Marginal throughput: a second job over twice the images; the difference cancels the
        # fixed costs of a run (actor start, model loading, Dataset start-up, the tail).
        (tmp / "in2").mkdir()
        for p in (tmp / "in").iterdir():
            shutil.copy(p, tmp / "in2" / p.name)
            shutil.copy(p, tmp / "in2" / f"b_{p.name}")
        secs2, count2, _ = ray_job(tmp / "in2", tmp / "out2", run_id="bench2", overrides=tuple(args.overrides))
        rows.append((f"Ray job, marginal ({count2} - {count} images)", count2 - count, secs2 - secs))
    bare = rows[:-2] or [("none", 1, 1.0)]
    best_bare = max(r[1] / r[2] for r in bare)
    one_thread = bare[0][1] / bare[0][2]
    print(f"\n{n} images ({args.copies} copies of examples/images), {cores} cores\n")
    print(f"{'variant':48s} {'images':>7s} {'seconds':>8s} {'img/s':>7s} {'vs best bare':>12s} {'vs 1-thread':>11s}")
    for name, count, secs in rows:
        rate = count / secs
        print(f"{name:48s} {count:7d} {secs:8.2f} {rate:7.2f} {rate / best_bare:12.2f} {rate / one_thread:11.2f}")
    print("\nRay job, seconds per stage summed over images (from _runs/bench.json):")
    for stage, s in sorted(report["stage_seconds"].items(), key=lambda kv: -kv[1]):
        print(f"  {stage:14s} {s:8.2f}")


if __name__ == "__main__":
    main()
