"""fsspec helpers: resolve URIs, atomic writes, retried reads. Knows nothing of models."""

from __future__ import annotations

import errno
import json
import os
import posixpath
import time
import uuid
from typing import Any, Callable

import fsspec
from fsspec.core import url_to_fs


# Temporary names of local atomic writes; the next run's clean-up removes any left behind.
TEMP_PREFIX = ".tmp-"


class StorageError(RuntimeError):
    """Storage that cannot be reached or used; the message says what to check."""


class NoSpaceError(StorageError):
    """The output's disk (or quota) is full (``ENOSPC`` / ``EDQUOT``); the message says what to do."""


def no_space_error(exc: BaseException | None) -> OSError | None:
    """The ``ENOSPC`` / ``EDQUOT`` OSError behind ``exc`` (following ``__cause__``, ``__context__``
    and Ray's ``.cause``), or None. Ray re-raises worker errors wrapped; this finds them."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        if isinstance(e, BaseException) and "No space left on device" in str(e) and not isinstance(e, OSError):
            stack.append(OSError(errno.ENOSPC, str(e)))
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    return None


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
    A failed local write (a full disk raises ``OSError`` ``ENOSPC``) removes its temporary
    file before the error propagates; one left by a killed process is removed by the next run.
    """
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            _write_local(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    else:
        fs.pipe_file(path, data)


def _write_local(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(fs: fsspec.AbstractFileSystem, path: str, payload: Any) -> None:
    atomic_write(fs, path, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def with_retries(read: Callable[[], Any], retries: int = 3,
                 fatal: tuple[type[BaseException], ...] = (FileNotFoundError,)) -> Any:
    """``read()``, retried with exponential backoff on transient errors (network, throttling:
    they vary by backend). ``fatal`` errors are raised at once; after ``retries`` retries the
    last error becomes a ``StorageError``."""
    for attempt in range(retries + 1):
        try:
            return read()
        except fatal:
            raise
        except Exception as e:  # noqa: BLE001 - network and throttling errors vary by backend
            if attempt == retries:
                raise StorageError(f"read failed after {retries + 1} attempts: {type(e).__name__}: {e}") from None
            time.sleep(min(0.2 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def read_bytes(fs: fsspec.AbstractFileSystem, path: str, retries: int = 3) -> bytes:
    """Read a whole file, retrying transient errors with backoff. Missing files are not retried."""
    return with_retries(lambda: fs.cat_file(path), retries)


def check_reachable(fs: fsspec.AbstractFileSystem, path: str, what: str) -> None:
    """Fail early with one clear line when storage is unreachable or credentials are wrong."""
    try:
        fs.exists(path)
    except Exception as e:  # noqa: BLE001 - backend-specific errors (credentials, DNS, refused)
        raise StorageError(f"cannot reach {what} {path!r}: {type(e).__name__}: {e}") from None
