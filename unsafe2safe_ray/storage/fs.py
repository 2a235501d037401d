"""fsspec helpers: resolve URIs, atomic writes, retried reads. Knows nothing of models."""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from typing import Any

import fsspec
from fsspec.core import url_to_fs


class StorageError(RuntimeError):
    """Storage that cannot be reached or used; the message says what to check."""


def filesystem(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for any fsspec URI or local path."""
    try:
        return url_to_fs(uri, **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise StorageError(f"cannot open {uri!r}: {e}") from None


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool({"file", "local"} & set(protocols))


def join(*parts: str) -> str:
    return posixpath.join(*[p.rstrip("/") if i < len(parts) - 1 else p for i, p in enumerate(parts)])


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a prefix.

    Local files go to a temporary name in the same directory and are renamed; object stores
    get a single PUT (an object becomes visible only when its upload completes).
    """
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, payload: Any) -> None:
    atomic_write(fs, path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def read_bytes(fs: fsspec.AbstractFileSystem, path: str, retries: int = 3) -> bytes:
    """Read a whole file, retrying transient errors with backoff. Missing files are not retried."""
    for attempt in range(retries + 1):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - network and throttling errors vary by backend
            if attempt == retries:
                raise StorageError(f"read failed after {retries + 1} attempts: {type(e).__name__}: {e}") from None
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def check_reachable(fs: fsspec.AbstractFileSystem, path: str, what: str) -> None:
    """Fail early with one clear line when storage is unreachable or credentials are wrong."""
    try:
        fs.exists(path)
    except Exception as e:  # noqa: BLE001 - backend-specific errors (credentials, DNS, refused)
        raise StorageError(f"cannot reach {what} {path!r}: {type(e).__name__}: {e}") from None
