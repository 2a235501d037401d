"""Faces-only throughput: this project's CenterFace + blur (the `cpu` profile's face path) against
the `deface` CLI, on the same images, measured in one run.

    .venv/bin/python benchmarks/bench_cpu_vs_deface.py [--repeat 8] [--workers 2] [--threads 1]

Both sides decode each file, detect faces, blur them and write an image file. ``deface`` runs as
its CLI (one process, default threads), once with each of its backends (OpenCV DNN, onnxruntime),
and the faster one is compared against; ours runs the way the
profile's detect actors do: ``--workers`` processes with ``--threads`` onnxruntime threads each
(defaults from the cpu profile). Printed: images/s for each side, end to end (process start and
model load included) and steady state (start-up subtracted), and the ratio ours / deface.
This is a benchmark, not a test: numbers depend on the machine and on its other load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"

_detector = None


def _init_worker(threads: int) -> None:
    """Load CenterFace once per worker process (as an actor's setup does)."""
    global _detector
    import cv2

    from unsafe2safe_ray.detectors.faces import FaceDetector

    cv2.setNumThreads(threads)
    _detector = FaceDetector(threads=threads)


def _anonymize_file(paths: tuple[str, str]) -> int:
    """Decode, detect, blur (ellipses, as the profile does for faces), encode, write. Returns
    the number of faces found."""
    import numpy as np
    from PIL import Image

    from unsafe2safe_ray.editors.classic import obscure_regions

    src, dst = paths
    image = np.asarray(Image.open(src).convert("RGB"))
    faces = _detector.detect(image)
    out = obscure_regions(image, [{"category": "people", "bbox": f.bbox} for f in faces], "blur")
    Image.fromarray(out).save(dst, quality=95) if dst.endswith(".jpg") else Image.fromarray(out).save(dst)
    return len(faces)


def _corpus(root: Path, repeat: int) -> list[Path]:
    """``repeat`` copies of every example image under ``root`` (distinct names)."""
    root.mkdir(parents=True)
    files = []
    for i in range(repeat):
        for src in sorted(EXAMPLES.iterdir()):
            if src.suffix.lower() in (".jpg", ".png"):
                dst = root / f"{src.stem}_{i:03d}{src.suffix}"
                shutil.copyfile(src, dst)
                files.append(dst)
    return files


def _time_deface(deface: str, backend: str, inputs: list[Path], threshold: float) -> float:
    """Wall seconds of one `deface` CLI run over ``inputs`` (outputs go beside them)."""
    for old_output in inputs[0].parent.glob("*_anonymized*"):
        old_output.unlink()  # a rerun must not find the previous run's outputs
    start = time.perf_counter()
    subprocess.run([deface, "--backend", backend, "--thresh", str(threshold), *map(str, inputs)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _time_ours(inputs: list[Path], out_dir: Path, workers: int, threads: int) -> tuple[float, float, int]:
    """(start-up seconds, processing seconds, faces found) for our face path."""
    out_dir.mkdir()
    jobs = [(str(p), str(out_dir / p.name)) for p in inputs]
    ctx = mp.get_context("spawn")  # fresh processes, like Ray actors (no inherited sessions)
    start = time.perf_counter()
    with ctx.Pool(workers, initializer=_init_worker, initargs=(threads,)) as pool:
        # Make every worker load its model before the clock starts: one tiny job each.
        pool.map(_anonymize_file, jobs[:workers], chunksize=1)
        ready = time.perf_counter()
        faces = sum(pool.map(_anonymize_file, jobs, chunksize=1))
        done = time.perf_counter()
    return ready - start, done - ready, faces


def main() -> None:
    """Run both sides on the same corpus and print images/s and the ratio."""
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.detectors.faces import threads_for

    profile = load_config("cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=8, help="copies of each example image")
    parser.add_argument("--workers", type=int, default=profile.detect.pool_size)
    parser.add_argument("--threads", type=int, default=threads_for(profile.detect))
    parser.add_argument("--deface", default=str(Path(sys.executable).with_name("deface")))
    args = parser.parse_args()
    if not Path(args.deface).exists() and not shutil.which(args.deface):
        sys.exit(f"deface CLI not found at {args.deface}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        ours_in = _corpus(tmp_path / "ours_in", args.repeat)
        deface_in = _corpus(tmp_path / "deface_in", args.repeat)
        one_in = _corpus(tmp_path / "deface_one", 1)[:1]
        n = len(ours_in)

        # deface, each backend: the whole corpus, and one image to measure its start-up
        # (import + model load). The faster backend is the one compared against.
        threshold = profile.detect.face_score_threshold
        deface_runs = {}
        for backend in ("opencv", "onnxrt"):
            startup = _time_deface(args.deface, backend, one_in, threshold)
            total = _time_deface(args.deface, backend, deface_in, threshold)
            deface_runs[backend] = (startup, total)
        ours_startup, ours_proc, faces = _time_ours(ours_in, tmp_path / "ours_out", args.workers, args.threads)

    ours_total = ours_startup + ours_proc
    print(f"images: {n} ({args.repeat} x {n // args.repeat} examples); faces found by ours: {faces}")
    print(f"ours   : {args.workers} workers x {args.threads} thread(s)")
    print(f"  end to end  {n / ours_total:7.1f} img/s  ({ours_total:.2f} s, start-up {ours_startup:.2f} s)")
    print(f"  steady      {n / ours_proc:7.1f} img/s  ({ours_proc:.2f} s)")
    for backend, (startup, total) in deface_runs.items():
        # Steady state: the single-image run is almost all start-up, so subtract it.
        steady = max(1e-6, total - startup)
        print(f"deface : CLI, {backend} backend")
        print(f"  end to end  {n / total:7.1f} img/s  ({total:.2f} s, start-up ~{startup:.2f} s)")
        print(f"  steady      {n / steady:7.1f} img/s  ({steady:.2f} s)")
    best = min(deface_runs, key=lambda b: deface_runs[b][1])
    startup, total = deface_runs[best]
    print(f"ratio ours/deface ({best}, the faster): end to end {total / ours_total:.2f}x, "
          f"steady {max(1e-6, total - startup) / ours_proc:.2f}x")


if __name__ == "__main__":
    main()
