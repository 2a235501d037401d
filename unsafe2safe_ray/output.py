"""Read a job's output: committed samples only (files listed by commit markers)."""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from unsafe2safe_ray import records
from unsafe2safe_ray.imaging import image_from_bytes
from unsafe2safe_ray.storage.commits import read_commits
from unsafe2safe_ray.storage.layout import OutputLayout


class CommittedOutput:
    """The committed part of an output root. Uncommitted and replaced files are invisible."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.layout = OutputLayout(uri, storage_options or {})
        self.markers = read_commits(self.layout)

    @property
    def shards(self) -> list[int]:
        return sorted(self.markers)

    def files(self, kind: str) -> list[str]:
        """Absolute paths of committed ``images`` / ``captions`` / ``private`` files."""
        return [self.layout.path(rel) for s in self.shards for rel in self.markers[s]["files"].get(kind, [])]

    def _read_tables(self, kind: str, schema: pa.Schema) -> pa.Table:
        tables = []
        for path in self.files(kind):
            with self.layout.fs.open(path, "rb") as f:
                tables.append(pq.read_table(io.BytesIO(f.read()), schema=schema))
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def captions(self) -> pa.Table:
        """Every committed row of ``captions/`` (one per input image)."""
        return self._read_tables("captions", records.CAPTIONS_SCHEMA)

    def private(self) -> pa.Table:
        """Every committed row of ``private/``. Sensitive: never publish or log it."""
        return self._read_tables("private", records.PRIVATE_SCHEMA)

    def iter_tar(self, path: str) -> Iterator[tuple[str, str, bytes]]:
        """(key, extension, bytes) members of one tar, in order."""
        with self.layout.fs.open(path, "rb") as f:
            with tarfile.open(fileobj=io.BytesIO(f.read()), mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    yield key, ext, tar.extractfile(member).read()

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """One dict per committed row: key, image (HxWx3 uint8, None when failed), meta (the
        tar's JSON sidecar), caption (the captions row)."""
        for shard in self.shards:
            files = self.markers[shard]["files"]
            images: dict[str, np.ndarray] = {}
            metas: dict[str, dict] = {}
            for rel in files.get("images", []):
                for key, ext, data in self.iter_tar(self.layout.path(rel)):
                    if ext == "json":
                        metas[key] = json.loads(data)
                    else:
                        images[key] = image_from_bytes(data)
            for rel in files.get("captions", []):
                with self.layout.fs.open(self.layout.path(rel), "rb") as f:
                    table = pq.read_table(io.BytesIO(f.read()), schema=records.CAPTIONS_SCHEMA)
                for row in table.to_pylist():
                    yield {"key": row["key"], "image": images.get(row["key"]),
                           "meta": metas.get(row["key"], {}), "caption": row}

    def dataset(self):
        """A Ray Dataset of committed samples: key, ext, image (encoded bytes), meta (JSON)."""
        import ray.data

        tars = self.files("images")
        layout = self.layout

        def read_tar(row: dict[str, Any]) -> list[dict[str, Any]]:
            reader = CommittedOutput.__new__(CommittedOutput)
            reader.layout = layout
            samples: dict[str, dict[str, Any]] = {}
            for key, ext, data in reader.iter_tar(row["path"]):
                s = samples.setdefault(key, {"key": key, "ext": None, "image": None, "meta": None})
                if ext == "json":
                    s["meta"] = data.decode()
                else:
                    s["ext"], s["image"] = ext, data
            return list(samples.values())

        return ray.data.from_items([{"path": p} for p in tars]).flat_map(read_tar)


def open_output(uri: str, storage_options: dict[str, Any] | None = None) -> CommittedOutput:
    """Open an output root written by ``unsafe2safe run``."""
    return CommittedOutput(uri, storage_options)
