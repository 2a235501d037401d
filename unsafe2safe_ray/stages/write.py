"""``write``: finalize every row, encode it without metadata and write shard parts (always last).

Finalization is the last fail-closed guard: a flagged row that is not ``edited`` never reaches
the tar, whatever the stages before did. The stage outputs one small summary row per image for
the driver, which commits a shard once all its rows are written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pyarrow as pa

from unsafe2safe_ray import records
from unsafe2safe_ray.detectors import text_leaks
from unsafe2safe_ray.imaging import encode_image, unpack_passthrough
from unsafe2safe_ray.stages.base import Resources, Stage, map_batches
from unsafe2safe_ray.stages.load_captions import INSPECT_ONLY_ERROR
from unsafe2safe_ray.storage.layout import OutputLayout
from unsafe2safe_ray.storage.sink import Sample, write_part
from unsafe2safe_ray.storage.redact import redact_text, redact_uri

SUMMARY_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.int64()), ("status", pa.string()),
    ("files", pa.string()),
    ("error_stage", pa.string()), ("flagged_by", pa.string()),
])
# ``files``: JSON {kind: {"path", "size", "sha256"}} of the part holding the row (the same for
# every row of a part); the driver copies sizes and checksums into the shard's commit marker.


WITHHELD_ERROR = "flagged image was not edited; its original pixels are withheld"


def finalize(row: dict[str, Any], withheld_error: str = WITHHELD_ERROR) -> dict[str, Any]:
    """Turn a row's status into exactly one of edited / passed / failed (fail closed)."""
    status = row.get("status")
    if status == records.FAILED:
        return row
    if row.get("image") is None:
        return records.fail(row, "internal: no pixels reached the writer")
    if status == records.EDITED:
        return row
    if row.get("privacy_flag"):
        # Flagged but not edited: never write the original pixels.
        return records.fail(row, withheld_error)
    row["status"] = records.PASSED
    return row


class WriteStage(Stage):
    """Encodes rows and writes one part per shard present in the batch."""

    name = "write"

    def __init__(self, config: Any, layout: OutputLayout, run_id: str, inspect_only: bool = False) -> None:
        super().__init__(config)
        self.layout = layout
        self.run_id = run_id
        self.withheld_error = INSPECT_ONLY_ERROR if inspect_only else WITHHELD_ERROR

    def resources(self) -> Resources:
        return Resources(num_cpus=self.config.ray.write_num_cpus, batch_size=self.config.io.write_batch_size)

    def output_format(self, row: dict[str, Any]) -> str:
        fmt = self.config.io.output_format
        if fmt == "auto":
            return "png" if row.get("lossless") else "jpg"
        return fmt

    def to_sample(self, row: dict[str, Any]) -> Sample:
        # Published texts must not repeat the row's private details (redacted, or fail closed).
        row = finalize(text_leaks.check_row(row, self.config.publish.text_leaks), self.withheld_error)
        image_bytes = ext = None
        if row["status"] != records.FAILED:
            try:
                ext = self.output_format(row)
                # An unchanged passed JPEG: its own compressed data, metadata removed (lossless).
                copy = (unpack_passthrough(row.get("passthrough"), row.get("image"))
                        if row["status"] == records.PASSED and ext == "jpg" else None)
                image_bytes = copy or encode_image(records.get_image(row), ext, self.config.io.jpeg_quality)
            except Exception as e:  # noqa: BLE001 - becomes a failed row
                row = records.fail(row, f"encode: {type(e).__name__}: {e}")
                image_bytes = ext = None
        categories = list(row.get("categories") or [])
        # Published URIs and errors carry no credentials or signed-URL queries (storage.redact).
        public_uri = redact_uri(row["source_uri"])
        sidecar = {"key": row["key"], "source_uri": public_uri, "label": row.get("label"),
                   "status": row["status"], "privacy_flag": bool(row.get("privacy_flag")),
                   "categories": categories}
        caption_row = {name: row.get(name) for name in records.CAPTIONS_SCHEMA.names}
        caption_row.update(source_uri=public_uri, error=redact_text(caption_row.get("error")))
        caption_row.update(categories=categories, privacy_flag=bool(row.get("privacy_flag")), run_id=self.run_id,
                           regions=records.public_regions(row.get("regions")))
        private_row = {name: row.get(name) for name in records.PRIVATE_SCHEMA.names}
        private_row["run_id"] = self.run_id
        return Sample(row["key"], ext, image_bytes, sidecar, caption_row, private_row)

    def write_batch(self, batch: pa.Table) -> pa.Table:
        by_shard: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in batch.to_pylist():
            by_shard[row["shard"]].append(row)
        out: list[dict[str, Any]] = []
        for shard, rows in by_shard.items():
            samples = [self.to_sample(row) for row in rows]
            files = json.dumps(write_part(self.layout, shard, self.run_id, samples))
            for row, sample in zip(rows, samples):
                out.append({"key": sample.key, "shard": shard, "status": sample.caption_row["status"],
                            "files": files,
                            "error_stage": sample.caption_row.get("error_stage") or "",
                            "flagged_by": row.get("flagged_by") or ""})
        return pa.Table.from_pylist(out, schema=SUMMARY_SCHEMA)

    def apply(self, ds: Any) -> Any:
        # Tasks, not actors: writing is stateless I/O. The output has the summary schema.
        return map_batches(ds, self.write_batch, name=self.name, resources=self.resources())
