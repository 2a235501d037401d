"""Commit markers: ``_commits/shard-NNNNN.json`` is written last and is the only meaning of done."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any

from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.layout import COMMITS, DATA_DIRS, OutputLayout, shard_of_file

VERSIONED_PACKAGES = ("unsafe2safe-ray", "ray", "pyarrow", "pillow", "torch", "transformers",
                      "diffusers", "vllm", "onnxruntime", "rapidocr")


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def read_commits(layout: OutputLayout) -> dict[int, dict[str, Any]]:
    """All commit markers, by shard. Reads only ``_commits/`` (one small file per shard)."""
    directory = layout.path(COMMITS)
    if not layout.fs.exists(directory):
        return {}
    paths = [p for p in layout.fs.ls(directory, detail=False) if p.endswith(".json")]

    def load(p: str) -> dict[str, Any]:
        with layout.fs.open(p, "rb") as f:
            return json.loads(f.read())

    with ThreadPoolExecutor(max_workers=16) as pool:
        markers = list(pool.map(load, paths))
    return {m["shard"]: m for m in markers}


def write_commit(layout: OutputLayout, shard: int, run_id: str, counts: dict[str, int],
                 files: dict[str, list[str]], config_digest: str, versions: dict[str, str]) -> dict[str, Any]:
    """Write the marker of a shard whose files are all durable."""
    marker = {
        "shard": shard,
        "run_id": run_id,
        "counts": counts,
        "files": {k: sorted(v) for k, v in files.items()},
        "config_digest": config_digest,
        "versions": versions,
        "committed_at": time.time(),
    }
    storage.write_json(layout.fs, layout.commit(shard), marker)
    return marker


def referenced_files(marker: dict[str, Any] | None) -> set[str]:
    if not marker:
        return set()
    return {f for files in marker["files"].values() for f in files}


def data_files_of_shards(layout: OutputLayout, shards: set[int]) -> set[str]:
    """Relative paths of every data file that belongs to one of ``shards``."""
    out: set[str] = set()
    for d in DATA_DIRS:
        directory = layout.path(d)
        if not layout.fs.exists(directory):
            continue
        for p in layout.fs.ls(directory, detail=False):
            if shard_of_file(p) in shards:
                out.add(layout.relative(p.rstrip("/")))
    return out


def remove_files(layout: OutputLayout, relative_paths: set[str]) -> None:
    for rel in sorted(relative_paths):
        try:
            layout.fs.rm(layout.path(rel))
        except FileNotFoundError:
            pass
