"""``decode``: read each planned file, decode, validate and normalize it (always the first stage).

Storage read errors are retried (``io.read_retries``), then recorded; a hostile file becomes a
failed row with a clear error while the job goes on.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.imaging import DecodeLimits, ImageRejected, decode_image
from unsafe2safe_ray.stages.base import Resources, Stage
from unsafe2safe_ray.storage import fs as storage


class DecodeStage(Stage):
    """Planned rows (key, shard, source_uri, label) -> pipeline rows with RGB pixels."""

    name = "decode"

    def resources(self) -> Resources:
        return Resources(num_cpus=self.config.ray.decode_num_cpus, batch_size=self.config.io.read_batch_size)

    def setup(self) -> None:
        io_cfg = self.config.io
        self.limits = DecodeLimits(io_cfg.max_pixels, io_cfg.max_side, io_cfg.min_side, io_cfg.max_aspect_ratio)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._decode(row) for row in rows]

    def _decode(self, planned: dict[str, Any]) -> dict[str, Any]:
        row = planned if "status" in planned and planned.get("status") else records.new_row(
            planned["key"], planned["shard"], planned["source_uri"], planned.get("label"),
            records.derive_seed(self.config.seed, planned["key"]))
        try:
            fs, path = storage.filesystem(row["source_uri"], self.config.io.storage_options)
            data = storage.read_bytes(fs, path, retries=self.config.io.read_retries)
        except FileNotFoundError:
            return records.fail(row, "read: file not found")
        except storage.StorageError as e:
            return records.fail(row, f"read: {e}")
        try:
            pixels, lossless = decode_image(data, self.limits)
        except ImageRejected as e:
            return records.fail(row, f"decode: {e}")
        records.set_image(row, pixels)
        row["lossless"] = lossless
        return row
