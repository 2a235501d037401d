"""``load_captions``: bring an earlier inspect-only run's Stage 1 results back into the rows.

Used by ``--stages edit``: the earlier output's committed captions and private tables of each
shard are read once per worker and joined by key, so editing can run on a different GPU split
than captioning.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.output import CommittedOutput
from unsafe2safe_ray.stages.base import Resources, Stage

CAPTION_FIELDS = ("privacy_flag", "regions", "public_caption", "edit_instruction", "combined_caption",
                  "caption_source", "prompt_version")
PRIVATE_FIELDS = ("private_caption", "privacy_review", "regions")
# The writer's error for flagged rows of an inspect-only run: those rows are waiting for the edit.
INSPECT_ONLY_ERROR = "not edited: inspect-only run (--stages inspect); run --stages edit on this output next"


class LoadCaptionsStage(Stage):
    """Fill Stage 1 columns from ``earlier_uri``'s committed output."""

    name = "load_captions"

    def __init__(self, config: Any, earlier_uri: str) -> None:
        super().__init__(config)
        self.earlier_uri = earlier_uri

    def resources(self) -> Resources:
        return Resources(num_cpus=self.config.ray.decode_num_cpus, batch_size=self.config.io.read_batch_size)

    def setup(self) -> None:
        self.earlier = CommittedOutput(self.earlier_uri, self.config.io.storage_options)
        self.cached_shard: int | None = None
        self.by_key: dict[str, dict[str, Any]] = {}

    def _load_shard(self, shard: int) -> None:
        if shard == self.cached_shard:
            return
        marker = self.earlier.markers.get(shard)
        self.by_key = {}
        if marker is not None:
            reader = CommittedOutput.__new__(CommittedOutput)
            reader.layout, reader.markers = self.earlier.layout, {shard: marker}
            for row in reader.captions().to_pylist():
                self.by_key[row["key"]] = row
            for row in reader.private().to_pylist():
                self.by_key.setdefault(row["key"], {}).update({k: row[k] for k in PRIVATE_FIELDS})
        self.cached_shard = shard

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for row in rows:
            self._load_shard(row["shard"])
            earlier = self.by_key.get(row["key"])
            if earlier is None or "status" not in earlier:
                records.fail(row, f"load_captions: no committed row for {row['key']} in {self.earlier_uri}")
                continue
            if earlier["status"] == records.FAILED and earlier.get("error") != INSPECT_ONLY_ERROR:
                records.fail(row, f"earlier run failed: {earlier.get('error')}", stage="load_captions")
                continue
            for name in CAPTION_FIELDS + PRIVATE_FIELDS:
                row[name] = earlier.get(name)
            row["privacy_flag"] = bool(earlier.get("privacy_flag"))
            row["categories"] = list(earlier.get("categories") or [])
            row["regions"] = list(earlier.get("regions") or [])
        return rows
