"""Driver memory of ``evaluate`` at N and 10*N pairs: the target is flat (within +10 %).

``evaluate`` streams: pairs are read by Ray tasks, scored by the actor pool, and the driver
appends each scored batch to ``per_image.parquet`` and folds it into bounded state (sums,
histograms, the worst-k gallery). This measures that: for each size, in a fresh process, it
runs the ``evaluate`` verb (``unsafe2safe_ray.eval.commands.evaluate``, the CLI's function) with
cheap metrics on tiny synthetic images and reports the driver's peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), next to the RSS right before ``evaluate``
started (imports and Ray up) so the growth can be told from the fixed cost.

The anonymized side is a pipeline output (``--source output``, made by ``run_job`` with the
``none`` profile in its own process before measuring) or a folder of same-named images
(``--source folder``, a baseline from another tool; the driver holds both listings there).

    python benchmarks/bench_eval_memory.py --pairs 1000            # 1 k and 10 k pairs
    python benchmarks/bench_eval_memory.py --pairs 1000 --factor 5 # 1 k and 5 k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synth(root: Path, n: int, size: int) -> None:
    """``n`` small JPEGs in ten class folders (distinct pixels, so no two pairs are equal)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = root / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, axis=1)).save(d / f"{i:07d}.jpg", quality=90)


def anonymize(src: Path, out: Path, shard_size: int) -> None:
    """A pipeline output of ``src`` (``none`` profile), run in this (preparing) process."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.job import run_job

    cfg = load_config("none", overrides=[f"io.shard_size={shard_size}", "io.read_batch_size=64",
                                         "io.write_batch_size=128", "ray.decode_num_cpus=1"])
    run_job(str(src), str(out), cfg, run_id="bench")


def copy_folder(src: Path, out: Path) -> None:
    """A baseline folder: every image again under the same relative name, one pixel changed."""
    import numpy as np
    from PIL import Image

    for path in sorted(src.rglob("*.jpg")):
        target = out / path.relative_to(src).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path).convert("RGB")).copy()
        pixels[0, 0] = 0
        Image.fromarray(pixels).save(target)


def _ray_init() -> None:
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False


def prepare(args: argparse.Namespace, root: Path, n: int) -> tuple[Path, Path]:
    """Inputs for one size, made in a child process so that the measured one starts clean."""
    originals, anonymized = root / f"in{n}", root / f"anon{n}"
    synth(originals, n, args.size)
    if args.source == "output":
        _ray_init()
        anonymize(originals, anonymized, args.shard_size)
    else:
        copy_folder(originals, anonymized)
    return originals, anonymized


def measure(args: argparse.Namespace) -> dict:
    """In a fresh process: Ray up, then the ``evaluate`` verb; peak RSS before and after."""
    _ray_init()
    from unsafe2safe_ray.eval.commands import evaluate

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    evaluate(original=args.original, anonymized=f"bench={args.anonymized}", out=args.out,
             metrics=args.metrics, clip_model=None, pool_size=args.pool_size)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = json.loads(Path(args.out, "summary.json").read_text())
    return {"pairs": summary["images_total"], "scored": summary["images_scored"], "seconds": round(seconds, 1),
            "rss_before_mb": round(before / 1024, 1), "rss_peak_mb": round(after / 1024, 1)}


def _child(mode: str, args: argparse.Namespace, **extra: str) -> str:
    command = [sys.executable, __file__, f"--{mode}", "--size", str(args.size), "--shard-size", str(args.shard_size),
               "--source", args.source, "--metrics", args.metrics, "--pool-size", str(args.pool_size)]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}", value]
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1", RAY_USAGE_STATS_ENABLED="0")
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1000, help="N; also measured at factor*N")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--source", choices=("output", "folder"), default="output")
    parser.add_argument("--metrics", default="fidelity")
    parser.add_argument("--pool-size", type=int, default=1)
    # Internal: one step in its own process.
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--original", help=argparse.SUPPRESS)
    parser.add_argument("--anonymized", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        originals, anonymized = prepare(args, Path(args.root), args.n)
        print(json.dumps({"original": str(originals), "anonymized": str(anonymized)}))
        return
    if args.measure:
        print(json.dumps(measure(args)))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        for n in (args.pairs, args.factor * args.pairs):
            start = time.perf_counter()
            paths = json.loads(_child("prepare", args, root=tmp, n=str(n)))
            prep = time.perf_counter() - start
            result = json.loads(_child("measure", args, out=str(Path(tmp) / f"eval{n}"), **paths))
            result["prepare_seconds"] = round(prep, 1)
            results.append(result)
            print(json.dumps(result), flush=True)
    small, large = results
    growth = 100 * (large["rss_peak_mb"] / small["rss_peak_mb"] - 1)
    print(f"\nevaluate driver peak RSS, {args.source} of {args.size}x{args.size} JPEGs, --metrics {args.metrics}:")
    for r in results:
        print(f"  {r['pairs']:>6} pairs: peak {r['rss_peak_mb']:.1f} MB (before evaluate {r['rss_before_mb']:.1f} MB), "
              f"{r['seconds']:.1f} s, {r['pairs'] / r['seconds']:.0f} pairs/s")
    print(f"  ratio {large['rss_peak_mb'] / small['rss_peak_mb']:.3f} ({growth:+.1f} %) for {args.factor}x the pairs; "
          f"target within +10 %: {'met' if growth <= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
