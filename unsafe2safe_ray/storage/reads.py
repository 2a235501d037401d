"""Bounded reads of input files: regular files only, a byte limit checked from the size before
anything is read, and a timeout per attempt (model-free).

Local files are opened non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO
or device named ``pipe.jpg`` is refused at once instead of blocking the worker, and a 1.5 GB
non-image is refused from its size without reading a byte. Remote objects are sized with one
``info`` call first; where the size is unknown the read stops after ``max_bytes + 1`` bytes.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Any, Callable

from unsafe2safe_ray.storage.fs import StorageError, is_local, with_retries

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class ReadRefused(StorageError):
    """The file must not be read (not a regular file, too large); never retried."""


class ReadTimeout(StorageError):
    """One read attempt took longer than the timeout; never retried."""


def read_bounded(fs: Any, path: str, max_bytes: int, timeout_s: float, retries: int = 3) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes, retrying transient errors with
    backoff. ``FileNotFoundError``, ``ReadRefused`` and ``ReadTimeout`` are raised at once."""
    return with_retries(lambda: _with_timeout(lambda: _read_once(fs, path, max_bytes), timeout_s), retries,
                        fatal=(FileNotFoundError, ReadRefused, ReadTimeout))


def _too_big(size: int, max_bytes: int) -> ReadRefused:
    return ReadRefused(f"file is {size} bytes, above io.max_file_bytes={max_bytes}; not read")


def _read_once(fs: Any, path: str, max_bytes: int) -> bytes:
    if is_local(fs):
        return _read_local(path, max_bytes)
    info = fs.info(path)
    kind = info.get("type", "file")
    if kind not in ("file", None):
        raise ReadRefused(f"not a regular file ({kind})")
    size = info.get("size")
    if size is not None and size > max_bytes:
        raise _too_big(size, max_bytes)
    if size is not None:
        data = fs.cat_file(path)
    else:
        with fs.open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_big(len(data), max_bytes)
    return data


def _read_local(path: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a plain file")
            raise ReadRefused(f"not a regular file ({kind})")
        if st.st_size > max_bytes:
            raise _too_big(st.st_size, max_bytes)
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(max_bytes + 1 - total, 16 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                raise _too_big(total, max_bytes)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _with_timeout(fn: Callable[[], bytes], timeout_s: float) -> bytes:
    """``fn()`` in a daemon thread; a call still running after ``timeout_s`` is abandoned (its
    thread ends with its connection) and the row fails with ``ReadTimeout``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    thread = threading.Thread(target=target, name="u2s-read", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ReadTimeout(f"read timed out after {timeout_s:g} s (io.read_timeout_s)")
    if "error" in box:
        raise box["error"]
    return box["value"]
