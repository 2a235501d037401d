"""Where every output file lives (see ARCHITECTURE.md, "Output layout")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import fsspec

from unsafe2safe_ray.storage.fs import filesystem, join

IMAGES, CAPTIONS, PRIVATE, COMMITS, PLAN, RUNS = "images", "captions", "private", "_commits", "_plan", "_runs"
DATA_DIRS = (IMAGES, CAPTIONS, PRIVATE)
_SHARD_FILE = re.compile(r"^shard-(\d{5,})-")


@dataclass
class OutputLayout:
    """Paths of one output root on one filesystem. Picklable (fsspec filesystems are)."""

    root_uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.root = filesystem(self.root_uri, self.storage_options)
        self.root = self.root.rstrip("/")

    def __getstate__(self) -> dict[str, Any]:
        return {"root_uri": self.root_uri, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.root_uri, self.storage_options = state["root_uri"], state["storage_options"]
        self.__post_init__()

    @property
    def fsspec(self) -> fsspec.AbstractFileSystem:
        return self.fs

    def path(self, *parts: str) -> str:
        return join(self.root, *parts)

    @property
    def plan_json(self) -> str:
        return self.path(PLAN, "plan.json")

    @property
    def plan_images(self) -> str:
        return self.path(PLAN, "images.parquet")

    def commit(self, shard: int) -> str:
        return self.path(COMMITS, f"shard-{shard:05d}.json")

    def run_report(self, run_id: str) -> str:
        return self.path(RUNS, f"{run_id}.json")

    @staticmethod
    def part_stem(shard: int, run_id: str, part: str) -> str:
        return f"shard-{shard:05d}-{run_id}-{part}"

    def relative(self, path: str) -> str:
        """Path relative to the output root (what commit markers store)."""
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path


def shard_of_file(name: str) -> int | None:
    """The shard number encoded in a data file name, or None."""
    m = _SHARD_FILE.match(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None
