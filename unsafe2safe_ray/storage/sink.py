"""The shard sink: one part of a shard = one WebDataset tar + captions Parquet + private Parquet.

Names are deterministic (shard, run id, digest of the part's keys), so a retried task rewrites
the same files. Each file is written atomically; the commit marker (written later by the driver)
lists exactly the parts that make up a committed shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unsafe2safe_ray import records
from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.commits import file_entry
from unsafe2safe_ray.storage.layout import CAPTIONS, IMAGES, PRIVATE, OutputLayout


@dataclass
class Sample:
    """One finalized row: its public sidecar, its encoded image (None for failed rows), and the
    captions and private table rows."""

    key: str
    image_ext: str | None
    image_bytes: bytes | None
    sidecar: dict[str, Any]
    caption_row: dict[str, Any]
    private_row: dict[str, Any]


def part_id(keys: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()[:10]


def _tar_bytes(samples: list[Sample]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in sorted(samples, key=lambda s: s.key):
            if s.image_bytes is None:
                continue  # failed rows never reach the public tar
            for name, data in ((f"{s.key}.{s.image_ext}", s.image_bytes),
                               (f"{s.key}.json", json.dumps(s.sidecar, sort_keys=True).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = 0  # deterministic bytes for identical content
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _parquet_bytes(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    return buf.getvalue()


def write_part(layout: OutputLayout, shard: int, run_id: str, samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """Write one part of ``shard``; returns {"images"|"captions"|"private": {"path": relative
    path, "size": bytes, "sha256": hex digest}} (``commits.file_entry``), computed from the very
    bytes written, so that the commit marker can record them."""
    stem = layout.part_stem(shard, run_id, part_id([s.key for s in samples]))
    tar_rel = f"{IMAGES}/{stem}.tar"
    for s in samples:
        s.caption_row["image_tar"] = tar_rel if s.image_bytes is not None else ""
        s.caption_row["image_member"] = f"{s.key}.{s.image_ext}" if s.image_bytes is not None else ""
    files = {
        "images": (tar_rel, _tar_bytes(samples)),
        "captions": (f"{CAPTIONS}/{stem}.parquet",
                     _parquet_bytes([s.caption_row for s in samples], records.CAPTIONS_SCHEMA)),
        "private": (f"{PRIVATE}/{stem}.parquet",
                    _parquet_bytes([s.private_row for s in samples], records.PRIVATE_SCHEMA)),
    }
    for rel, data in files.values():
        storage.atomic_write(layout.fs, layout.path(rel), data)
    return {kind: file_entry(rel, data) for kind, (rel, data) in files.items()}
