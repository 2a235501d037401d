"""Storage helpers: retried reads, atomic writes, and read errors recorded as failed rows."""

from __future__ import annotations

import fsspec
import pytest

from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.stages.base import run_rows
from unsafe2safe_ray.stages.decode import DecodeStage
from unsafe2safe_ray.storage import fs as storage


class FlakyFS:
    """A local filesystem whose first ``failures`` reads raise a transient error."""

    def __init__(self, failures: int) -> None:
        self.inner = fsspec.filesystem("file")
        self.failures = failures
        self.calls = 0

    def cat_file(self, path: str) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("connection reset by peer")
        return self.inner.cat_file(path)


def test_reads_are_retried_then_give_up_with_a_clear_error(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"payload")
    flaky = FlakyFS(failures=2)
    assert storage.read_bytes(flaky, str(tmp_path / "a.bin"), retries=2) == b"payload"
    assert flaky.calls == 3
    with pytest.raises(storage.StorageError, match="read failed after 2 attempts: ConnectionError"):
        storage.read_bytes(FlakyFS(failures=5), str(tmp_path / "a.bin"), retries=1)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    fs = fsspec.filesystem("file")
    path = str(tmp_path / "d" / "x.json")
    storage.atomic_write(fs, path, b"one")
    storage.atomic_write(fs, path, b"two")
    assert (tmp_path / "d" / "x.json").read_bytes() == b"two"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.json"]


def test_unreadable_files_become_failed_rows(tmp_path):
    stage = DecodeStage(load_config("none"))
    stage.setup()
    rows = [{"key": "000000000", "shard": 0, "source_uri": str(tmp_path / "missing.jpg"), "label": None}]
    [row] = run_rows(stage, rows)
    assert row["status"] == "failed" and row["error"] == "read: file not found" and row["image"] is None
