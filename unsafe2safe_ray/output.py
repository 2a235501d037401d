"""Read a job's output: committed samples only (files listed by commit markers).

Every marker is validated when the output is opened (``commits.read_commits``), so a reader
only ever opens names inside the output's own data folders. Every file read is checked against
its marker: a missing file or a wrong size raises ``IntegrityError`` before any of its content is
used; a checksum that differs raises it once the file has been read (for a streamed tar: at its
end, as gzip checks its CRC). A committed ``edited`` or ``passed`` row without its image in the
tar is an ``IntegrityError`` too, never a sample without pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from unsafe2safe_ray import records
from unsafe2safe_ray.imaging import image_from_bytes
from unsafe2safe_ray.storage.commits import CHECKSUM, IntegrityError, read_commits
from unsafe2safe_ray.storage.layout import OutputLayout, shard_of_file

_WITH_IMAGE = (records.EDITED, records.PASSED)


class _HashingReader:
    """A read-only file wrapper that counts and hashes what passes through it."""

    def __init__(self, f: Any) -> None:
        self.f, self.size, self.hash = f, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.size += len(data)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class CommittedOutput:
    """The committed part of an output root. Uncommitted and replaced files are invisible.

    Raises ``MarkerError`` (on open) for a marker that names anything outside the output's data
    folders, and ``IntegrityError`` (on read) for a committed file that is missing or damaged.
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.layout = OutputLayout(uri, storage_options or {})
        self.markers = read_commits(self.layout)

    @property
    def shards(self) -> list[int]:
        return sorted(self.markers)

    def files(self, kind: str) -> list[str]:
        """Absolute paths of committed ``images`` / ``captions`` / ``private`` files."""
        return [self.layout.path(rel) for s in self.shards for rel in self.markers[s]["files"].get(kind, [])]

    # -- integrity -------------------------------------------------------------------------

    def _info(self, rel: str) -> dict[str, Any] | None:
        """The marker's recorded {size, sha256} of ``rel`` (None for markers without them)."""
        marker = self.markers.get(shard_of_file(rel))
        return ((marker or {}).get("file_info") or {}).get(rel)

    def _damaged(self, rel: str, what: str) -> IntegrityError:
        shard = shard_of_file(rel)
        return IntegrityError(f"damaged committed file {self.layout.path(rel)} (shard {shard}): {what}; "
                              "`unsafe2safe status --verify` lists damage, `run --shards damaged` rewrites it")

    def _check(self, rel: str, size: int, digest: str | None, info: dict[str, Any] | None = None) -> None:
        info = info or self._info(rel)
        if info is None:
            return
        if size != info["size"]:
            raise self._damaged(rel, f"{size} bytes, its marker recorded {info['size']}")
        if digest is not None and info.get(CHECKSUM) and digest != info[CHECKSUM]:
            raise self._damaged(rel, f"{CHECKSUM} differs from its marker's (bits changed)")

    def _size(self, rel: str) -> int:
        try:
            return int(self.layout.fs.info(self.layout.path(rel))["size"])
        except FileNotFoundError:
            raise self._damaged(rel, "missing") from None

    def read_file(self, rel: str) -> bytes:
        """The whole committed file ``rel`` (relative to the root), checked against its marker
        (size and checksum). Raises ``IntegrityError`` if it is missing or damaged."""
        try:
            with self.layout.fs.open(self.layout.path(rel), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise self._damaged(rel, "missing") from None
        self._check(rel, len(data), hashlib.sha256(data).hexdigest())
        return data

    # -- tables ----------------------------------------------------------------------------

    def _read_tables(self, kind: str, schema: pa.Schema) -> pa.Table:
        tables = []
        for s in self.shards:
            for rel in self.markers[s]["files"].get(kind, []):
                tables.append(self._parquet(rel, schema))
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def _parquet(self, rel: str, schema: pa.Schema) -> pa.Table:
        data = self.read_file(rel)
        try:
            # Any schema version this reader knows (records.upgrade_table): version 1 parts of
            # older outputs come back in today's nested types.
            return records.upgrade_table(pq.read_table(io.BytesIO(data)), schema)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._damaged(rel, f"unreadable Parquet ({e})") from None

    def captions(self) -> pa.Table:
        """Every committed row of ``captions/`` (one per input image)."""
        return self._read_tables("captions", records.CAPTIONS_SCHEMA)

    def private(self) -> pa.Table:
        """Every committed row of ``private/``. Sensitive: never publish or log it."""
        return self._read_tables("private", records.PRIVATE_SCHEMA)

    # -- tars ------------------------------------------------------------------------------

    def iter_tar(self, path: str, info: dict[str, Any] | None = None) -> Iterator[tuple[str, str, bytes]]:
        """(key, extension, bytes) members of one tar, in order, streamed member by member.

        The size is checked before the first member (``IntegrityError`` if missing or cut), the
        checksum after the last one (``IntegrityError`` if bits changed), against ``info`` or
        else the marker's record of the file.
        """
        rel = self.layout.relative(path)
        self._check(rel, self._size(rel), None, info)
        try:
            with self.layout.fs.open(path, "rb") as f:
                reader = _HashingReader(f)
                try:
                    with tarfile.open(fileobj=reader, mode="r|") as tar:
                        for member in tar:
                            if not member.isfile():
                                continue
                            key, _, ext = member.name.partition(".")
                            yield key, ext, tar.extractfile(member).read()
                except (tarfile.TarError, EOFError) as e:
                    raise self._damaged(rel, f"unreadable tar ({e})") from None
                reader.drain()
        except FileNotFoundError:
            raise self._damaged(rel, "missing") from None
        self._check(rel, reader.size, reader.hash.hexdigest(), info)

    def _iter_part(self, tar_rel: str | None, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Merge one part's captions rows (sorted by key) with its tar (written in key order)."""
        i = 0

        def without_image(upto: str | None) -> Iterator[dict[str, Any]]:
            nonlocal i
            while i < len(rows) and (upto is None or rows[i]["key"] < upto):
                row = rows[i]
                if row["status"] in _WITH_IMAGE:
                    raise self._damaged(tar_rel or row.get("image_tar") or "images/",
                                        f"no image for the committed {row['status']} row {row['key']}")
                yield {"key": row["key"], "image": None, "meta": {}, "caption": row}
                i += 1

        def joined(key: str, data: bytes | None, meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
            nonlocal i
            yield from without_image(key)
            if i >= len(rows) or rows[i]["key"] != key:
                raise self._damaged(tar_rel, f"sample {key} has no committed captions row")
            row = rows[i]
            i += 1
            if data is None:
                if row["status"] in _WITH_IMAGE:
                    raise self._damaged(tar_rel, f"no image for the committed {row['status']} row {key}")
                yield {"key": key, "image": None, "meta": meta, "caption": row}
                return
            try:
                image = image_from_bytes(data)
            except Exception as e:  # noqa: BLE001 - any decoder error means damaged bytes
                raise self._damaged(tar_rel, f"image of {key} does not decode ({type(e).__name__})") from None
            yield {"key": key, "image": image, "meta": meta, "caption": row}

        if tar_rel is not None:
            current: str | None = None
            data: bytes | None = None
            meta: dict[str, Any] = {}
            for key, ext, payload in self.iter_tar(self.layout.path(tar_rel)):
                if key != current:
                    if current is not None:
                        yield from joined(current, data, meta)
                    current, data, meta = key, None, {}
                if ext == "json":
                    try:
                        meta = json.loads(payload)
                    except ValueError:
                        raise self._damaged(tar_rel, f"sidecar of {key} is not JSON") from None
                else:
                    data = payload
            if current is not None:
                yield from joined(current, data, meta)
        yield from without_image(None)

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """One dict per committed row: key, image (HxWx3 uint8, None when failed), meta (the
        tar's JSON sidecar), caption (the captions row).

        Streams: one part's captions rows are read, then its tar member by member, so the first
        sample comes after one decoded image, and memory holds one sample at a time. Raises
        ``IntegrityError`` for a missing or damaged file, and for a committed ``edited`` or
        ``passed`` row whose image is not in its tar.
        """
        for part in self.parts():
            yield from self.iter_part(part)

    def parts(self) -> list[dict[str, Any]]:
        """The committed parts in ``iter_samples`` order, each ``{"shard", "captions",
        "images"}`` (paths relative to the root; ``images`` None for a part without a tar).
        Small picklable work items for ``iter_part``, so a reader can spread the parts over
        processes (``evaluate`` reads one part per Ray task)."""
        parts = []
        for shard in self.shards:
            files = self.markers[shard]["files"]
            tars = {posixpath.splitext(posixpath.basename(rel))[0]: rel for rel in files.get("images", [])}
            for cap_rel in sorted(files.get("captions", [])):
                stem = posixpath.splitext(posixpath.basename(cap_rel))[0]
                parts.append({"shard": shard, "captions": cap_rel, "images": tars.get(stem)})
        return parts

    def iter_part(self, part: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``iter_samples`` of one item of ``parts()``: the same samples, checks and errors."""
        rows = sorted(self._parquet(part["captions"], records.CAPTIONS_SCHEMA).to_pylist(), key=lambda r: r["key"])
        yield from self._iter_part(part["images"], rows)

    def dataset(self):
        """A Ray Dataset of committed samples: key, ext, image (encoded bytes), meta (JSON).
        A damaged tar fails the read with ``IntegrityError``."""
        import ray.data

        items = [{"path": self.layout.path(rel), "info": json.dumps(self._info(rel))}
                 for s in self.shards for rel in self.markers[s]["files"].get("images", [])]
        layout = self.layout

        def read_tar(row: dict[str, Any]) -> list[dict[str, Any]]:
            reader = CommittedOutput.__new__(CommittedOutput)
            reader.layout, reader.markers = layout, {}
            samples: dict[str, dict[str, Any]] = {}
            for key, ext, data in reader.iter_tar(row["path"], json.loads(row["info"])):
                s = samples.setdefault(key, {"key": key, "ext": None, "image": None, "meta": None})
                if ext == "json":
                    s["meta"] = data.decode()
                else:
                    s["ext"], s["image"] = ext, data
            return list(samples.values())

        from unsafe2safe_ray.stages.base import flat_map

        return flat_map(ray.data.from_items(items), read_tar, name="read_samples", num_cpus=0.25)


def open_output(uri: str, storage_options: dict[str, Any] | None = None) -> CommittedOutput:
    """Open an output root written by ``unsafe2safe run``. Raises ``MarkerError`` when a commit
    marker is malformed or names files outside the output's data folders."""
    return CommittedOutput(uri, storage_options)
