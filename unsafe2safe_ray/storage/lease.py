"""One writer per output: the lease object ``OUTPUT/_lease.json``, and the clean-up rules.

A run takes the lease before it touches anything in the output and releases it at the end (also
on error). The lease records who holds it (run id, host, pid), since when, and its heartbeat;
a background thread in the driver refreshes the heartbeat every ``expiry_s / 4`` seconds.

Taking the lease is an atomic create where the store supports one:

- local files: ``O_CREAT | O_EXCL``, with every read-check-replace (refresh, takeover, release)
  serialized by a ``filelock`` lock file beside the lease;
- S3 (s3fs): a conditional ``PutObject`` (``If-None-Match: *`` to create, ``If-Match: <etag>``
  to refresh or take over) and a conditional ``DeleteObject`` through s3fs's own client;
- any other fsspec store: check-then-write (best effort; two runs started in the same instant
  may both win).

A lease may be taken over when its heartbeat expired, or at once when its holder ran on this
host and its process is gone (a killed driver). ``break_lease=True`` takes it whatever its state
(for operators who know the holder is dead). A run whose lease was taken over notices at its
next heartbeat and stops committing (``LeaseLostError``).

This module is model-free: fsspec, filelock and the standard library only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import fsspec

from unsafe2safe_ray.storage.fs import TEMP_PREFIX, StorageError, is_local, join

log = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"


class LeaseHeldError(StorageError):
    """Another live run holds the output's lease; the message names it and says what to do."""


class LeaseLostError(StorageError):
    """This run's lease was taken over (expired heartbeat or ``--break-lease``) or could not
    be refreshed before it expired; the run must stop writing."""


class _Conflict(Exception):
    """A conditional write or delete lost a race (the lease changed underneath)."""


@dataclass(frozen=True)
class LeaseRecord:
    """The content of ``_lease.json``. Times are Unix seconds on the holder's clock."""

    run_id: str
    host: str
    pid: int
    token: str
    started_at: float
    heartbeat_at: float
    expiry_s: float

    @property
    def expires_at(self) -> float:
        return self.heartbeat_at + self.expiry_s

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self) | {"expires_at": self.expires_at}, indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord | None":
        """The record, or None for an unreadable one (treated as expired)."""
        try:
            d = json.loads(data)
            return cls(str(d["run_id"]), str(d["host"]), int(d["pid"]), str(d["token"]),
                       float(d["started_at"]), float(d["heartbeat_at"]), float(d["expiry_s"]))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, since {_utc(self.started_at)}, "
                f"last heartbeat {max(0.0, time.time() - self.heartbeat_at):.0f}s ago)")


def _utc(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def holder_gone(record: LeaseRecord | None, now: float | None = None) -> str | None:
    """Why ``record`` may be taken over (expired, dead local process, unreadable), else None."""
    if record is None:
        return "unreadable lease"
    now = time.time() if now is None else now
    if record.expires_at <= now:
        return f"heartbeat expired at {_utc(record.expires_at)}"
    if record.host == socket.gethostname() and not _pid_alive(record.pid):
        return f"process {record.pid} on this host is gone"
    return None


# -- backends: read / create / replace / delete with a version to compare against -------------

class _Backend:
    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs, self.path = fs, path

    def read(self) -> tuple[bytes, Any] | None:
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> Any:
        if self.fs.exists(self.path):
            raise FileExistsError(self.path)
        self.fs.pipe_file(self.path, data)
        return data

    def replace(self, data: bytes, version: Any) -> Any:
        current = self.read()
        if current is None or current[1] != version:
            raise _Conflict()
        self.fs.pipe_file(self.path, data)
        return data

    def delete(self, version: Any) -> None:
        current = self.read()
        if current is None or current[1] != version:
            raise _Conflict()
        self.fs.rm_file(self.path)

    def created_at(self) -> float:
        """Modification time of the lease object on the store's clock (for file age checks)."""
        return self.fs.modified(self.path).timestamp()


class _LocalBackend(_Backend):
    """O_EXCL create; read-check-replace under a ``filelock`` lock beside the lease."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        super().__init__(fs, path)
        from filelock import FileLock

        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.lock = FileLock(path + ".lock", timeout=30)

    def read(self) -> tuple[bytes, Any] | None:
        with self.lock:
            return self._read()

    def _read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, data

    def create(self, data: bytes) -> Any:
        with self.lock:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # FileExistsError
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            return data

    def replace(self, data: bytes, version: Any) -> Any:
        with self.lock:
            current = self._read()
            if current is None or current[1] != version:
                raise _Conflict()
            tmp = f"{self.path}.{TEMP_PREFIX}{uuid.uuid4().hex}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return data

    def delete(self, version: Any) -> None:
        with self.lock:
            current = self._read()
            if current is None or current[1] != version:
                raise _Conflict()
            os.unlink(self.path)

    def created_at(self) -> float:
        return os.stat(self.path).st_mtime


class _S3Backend(_Backend):
    """Conditional PutObject / DeleteObject through the aiobotocore client behind s3fs."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        super().__init__(fs, path)
        self.bucket, self.key, _ = fs.split_path(path)

    def _call(self, method: str, **kwargs: Any) -> Any:
        from fsspec.asyn import sync

        async def go() -> Any:
            out = await self.fs._call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
            if method == "get_object":
                body = out["Body"]
                try:
                    return await body.read(), out["ETag"]
                finally:
                    body.close()
            return out

        try:
            return sync(self.fs.loop, go)
        except FileNotFoundError:
            raise
        except OSError as e:
            cause = getattr(e.__cause__, "response", None) or {}
            if cause.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise (FileExistsError(self.path) if kwargs.get("IfNoneMatch") else _Conflict()) from None
            raise
        finally:
            self.fs.invalidate_cache(self.path)

    def read(self) -> tuple[bytes, Any] | None:
        try:
            return self._call("get_object")
        except FileNotFoundError:
            return None

    def create(self, data: bytes) -> Any:
        return self._call("put_object", Body=data, IfNoneMatch="*")["ETag"]

    def replace(self, data: bytes, version: Any) -> Any:
        try:
            return self._call("put_object", Body=data, IfMatch=version)["ETag"]
        except FileNotFoundError:
            raise _Conflict() from None

    def delete(self, version: Any) -> None:
        try:
            self._call("delete_object", IfMatch=version)
        except FileNotFoundError:
            raise _Conflict() from None


def _backend(fs: fsspec.AbstractFileSystem, path: str) -> _Backend:
    if is_local(fs):
        return _LocalBackend(fs, path)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if {"s3", "s3a"} & set(protocols) and hasattr(fs, "_call_s3"):
        return _S3Backend(fs, path)
    return _Backend(fs, path)


def read_lease(fs: fsspec.AbstractFileSystem, root: str) -> LeaseRecord | None:
    """The current holder of the output at ``root``, or None when no lease is held."""
    got = _backend(fs, join(root, LEASE_NAME)).read()
    return LeaseRecord.from_bytes(got[0]) if got else None


class OutputLease:
    """The lease of one run on one output. Use as a context manager, or call ``acquire()``,
    ``start_heartbeat()`` and ``release()``.

    ``acquire`` raises ``LeaseHeldError`` when a live run holds the output. ``check`` raises
    ``LeaseLostError`` once the heartbeat found the lease taken over or could not refresh it
    before it expired.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, run_id: str, expiry_s: float = 120.0,
                 heartbeat_s: float | None = None) -> None:
        if expiry_s <= 0:
            raise ValueError("lease expiry must be positive")
        self.fs, self.root, self.run_id = fs, root.rstrip("/"), run_id
        self.path = join(self.root, LEASE_NAME)
        self.expiry_s = float(expiry_s)
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else self.expiry_s / 4
        self.backend = _backend(fs, self.path)
        self.record: LeaseRecord | None = None
        self.version: Any = None
        self.taken_over: LeaseRecord | None = None
        # When the lease was taken, on the store's clock: older unreferenced files are debris.
        self.store_started_at: float = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    # -- taking and giving back ---------------------------------------------------------------

    def acquire(self, break_lease: bool = False) -> "OutputLease":
        """Take the lease. Raises ``LeaseHeldError`` (one line naming the holder) when another
        run holds it and is alive, unless ``break_lease``."""
        now = time.time()
        self.record = LeaseRecord(self.run_id, socket.gethostname(), os.getpid(), uuid.uuid4().hex,
                                  now, now, self.expiry_s)
        for _ in range(5):
            try:
                self.version = self.backend.create(self.record.to_bytes())
                break
            except FileExistsError:
                pass
            current = self.backend.read()
            if current is None:
                continue  # released meanwhile: try to create again
            holder = LeaseRecord.from_bytes(current[0])
            why = holder_gone(holder)
            if why is None and not break_lease:
                raise LeaseHeldError(
                    f"{self.root} is being written by {holder.describe()}; wait for it to finish, or "  # type: ignore[union-attr]
                    f"if it is dead rerun after its lease expires at {_utc(holder.expires_at)} "  # type: ignore[union-attr]
                    "or pass --break-lease")
            try:
                self.version = self.backend.replace(self.record.to_bytes(), current[1])
            except _Conflict:
                continue  # someone else changed it first: look again
            self.taken_over = holder
            log.warning("took over the lease on %s from %s: %s", self.root,
                        holder.describe() if holder else "an unreadable lease", why or "--break-lease")
            break
        else:
            raise LeaseHeldError(f"{self.root}: the lease kept changing while taking it; another run is starting there")
        try:
            self.store_started_at = self.backend.created_at()
        except Exception:  # noqa: BLE001 - a store without modification times: use our clock
            self.store_started_at = now
        return self

    def refresh(self) -> None:
        """Move the heartbeat forward. Raises ``LeaseLostError`` when the lease is no longer ours."""
        with self._mutex:
            if self.record is None:
                raise LeaseLostError(f"{self.root}: lease not held")
            record = LeaseRecord(**{**asdict(self.record), "heartbeat_at": time.time()})
            try:
                self.version = self.backend.replace(record.to_bytes(), self.version)
            except _Conflict:
                now_held = read_lease(self.fs, self.root)
                self._lost = (f"the lease on {self.root} was taken over by "
                              f"{now_held.describe() if now_held else 'nobody (it was deleted)'}")
                raise LeaseLostError(self._lost) from None
            self.record = record

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours (never raises for a
        lease already taken over; that is logged)."""
        self.stop_heartbeat()
        with self._mutex:
            if self.record is None:
                return
            try:
                self.backend.delete(self.version)
            except _Conflict:
                log.warning("lease on %s was no longer ours at release", self.root)
            except FileNotFoundError:
                pass
            self.record = None

    def check(self) -> None:
        """Raise ``LeaseLostError`` if the heartbeat found the lease lost."""
        if self._lost:
            raise LeaseLostError(f"{self._lost}; run {self.run_id} stopped without committing more shards")
        if self.record is not None and self.record.expires_at <= time.time():
            raise LeaseLostError(f"the lease on {self.root} expired before its heartbeat could refresh it; "
                                 f"run {self.run_id} stopped without committing more shards")

    # -- heartbeat ------------------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="u2s-lease-heartbeat", daemon=True)
            self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except LeaseLostError:
                log.error("%s", self._lost)
                return
            except Exception as e:  # noqa: BLE001 - transient store errors: try again next beat
                log.warning("lease heartbeat on %s failed (%s: %s); retrying", self.root, type(e).__name__, e)

    def __enter__(self) -> "OutputLease":
        self.acquire()
        self.start_heartbeat()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- clean-up rules -----------------------------------------------------------------------------

_PART = re.compile(r"^shard-(\d{5,})-([A-Za-z0-9_.]+)-[0-9a-f]+\.[a-z]+$")


def _mtime(info: dict[str, Any]) -> float | None:
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, _dt.datetime):
            return (v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp()
        if isinstance(v, str) and v:
            try:
                return _dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def removable_files(fs: fsspec.AbstractFileSystem, root: str, directories: Iterable[str], shards: set[int],
                    referenced: set[str], lease: OutputLease) -> set[str]:
    """Relative paths the run holding ``lease`` may delete before it writes, by the rules:

    - a data file of one of ``shards`` that no committed marker references (``referenced``) and
      that was written by this run (its name carries the run id) or before the lease was taken;
    - a temporary part (``.tmp-*``, left by a failed or killed write) of any shard, older than
      the lease.

    A file newer than the lease that is not this run's is left alone: it can only come from a
    run whose lease was taken over and that is still writing, and a later run removes it.
    """
    root = root.rstrip("/")
    out: set[str] = set()
    for d in directories:
        directory = join(root, d)
        try:
            entries = fs.ls(directory, detail=True)
        except FileNotFoundError:
            continue
        for info in entries:
            if info.get("type") == "directory":
                continue
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            rel = f"{d}/{name}"
            mtime = _mtime(info)
            older = mtime is not None and mtime < lease.store_started_at
            if name.startswith(TEMP_PREFIX):
                if older:
                    out.add(rel)
                continue
            m = _PART.match(name)
            if not m or int(m.group(1)) not in shards or rel in referenced:
                continue
            if m.group(2) == lease.run_id or older:
                out.add(rel)
    return out


def is_temporary(rel: str) -> bool:
    """Whether ``rel`` (``<folder>/<name>``) names a temporary part of an atomic write."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[1].startswith(TEMP_PREFIX) and ".." not in parts


def remove_temporary(fs: fsspec.AbstractFileSystem, root: str, rels: Iterable[str]) -> None:
    """Delete temporary parts (``<folder>/.tmp-*``) under ``root``. Raises ``ValueError`` for any
    other name, before deleting anything."""
    rels = sorted(rels)
    bad = [r for r in rels if not is_temporary(r)]
    if bad:
        raise ValueError(f"refusing to delete {bad[0]!r}: not a temporary part")
    for rel in rels:
        try:
            fs.rm_file(join(root.rstrip("/"), rel))
        except FileNotFoundError:
            pass
