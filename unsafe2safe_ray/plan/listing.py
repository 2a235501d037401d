"""List the input: a prefix of image files (labels from parent folders) or a manifest file."""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from unsafe2safe_ray.storage.fs import StorageError, filesystem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".ndjson")


class InputError(ValueError):
    """The input cannot be listed; the message says what to fix."""


@dataclass(frozen=True)
class InputListing:
    """Sorted source URIs with their labels (None when the dataset has none)."""

    kind: str  # "prefix" | "manifest"
    uris: list[str]
    labels: list[str | None]


def list_input(uri: str, storage_options: dict[str, Any] | None = None) -> InputListing:
    """List ``uri``: a manifest file by extension, otherwise a prefix listed recursively."""
    fs, path = filesystem(uri, storage_options)
    try:
        is_file = fs.isfile(path)
        exists = is_file or fs.exists(path)
    except Exception as e:  # noqa: BLE001 - credentials, DNS, connection refused
        raise StorageError(f"cannot reach input {uri!r}: {type(e).__name__}: {e}") from None
    if not exists:
        raise InputError(f"input {uri!r} does not exist")
    if is_file and path.lower().endswith(MANIFEST_EXTENSIONS):
        return _read_manifest(fs, path, uri)
    if is_file:
        raise InputError(f"input {uri!r} is a file but not a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
    return _list_prefix(fs, path, uri)


def _full_uri(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def _list_prefix(fs, path: str, uri: str) -> InputListing:
    files = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {uri!r}")
    root = path.rstrip("/")
    labels: list[str | None] = []
    for f in files:
        parent = posixpath.dirname(f).rstrip("/")
        # Images directly under the prefix have no class folder.
        labels.append(posixpath.basename(parent) if parent != root else None)
    return InputListing("prefix", [_full_uri(fs, f) for f in files], labels)


def _read_manifest(fs, path: str, uri: str) -> InputListing:
    with fs.open(path, "rb") as f:
        data = f.read()
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(io.BytesIO(data))
        else:
            table = pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"manifest {uri!r} cannot be parsed: {e}") from None
    if "uri" not in table.column_names:
        raise InputError(f"manifest {uri!r} has no 'uri' column (columns: {table.column_names})")
    uris = [str(u) for u in table.column("uri").to_pylist()]
    if any(not u or u == "None" for u in uris):
        raise InputError(f"manifest {uri!r} has empty uri values")
    if "label" in table.column_names:
        labels = [None if v is None else str(v) for v in table.column("label").to_pylist()]
    else:
        labels = [None] * len(uris)
    # Relative URIs are relative to the manifest's folder.
    base = posixpath.dirname(path)
    uris = [u if "://" in u or u.startswith("/") else _full_uri(fs, posixpath.join(base, u)) for u in uris]
    order = sorted(range(len(uris)), key=lambda i: uris[i])
    if len(set(uris)) != len(uris):
        raise InputError(f"manifest {uri!r} lists some uri more than once")
    return InputListing("manifest", [uris[i] for i in order], [labels[i] for i in order])
