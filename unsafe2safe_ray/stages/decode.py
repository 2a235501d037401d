"""``decode``: read each planned file, decode, validate and normalize it (always the first stage).

Storage read errors are retried (``io.read_retries``), then recorded; a hostile file becomes a
failed row with a clear error while the job goes on. Reads are bounded (``storage.reads``): only
regular files, at most ``io.max_file_bytes`` (checked from the size before reading) and
``io.read_timeout_s`` per attempt. Errors pass through ``storage.redact`` (they are published).
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.imaging import DecodeLimits, ImageRejected, decode, pack_passthrough
from unsafe2safe_ray.stages.base import Resources, Stage
from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.reads import read_bounded
from unsafe2safe_ray.storage.redact import redact_text


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
            io_cfg = self.config.io
            fs, path = storage.filesystem(row["source_uri"], io_cfg.storage_options)
            data = read_bounded(fs, path, io_cfg.max_file_bytes, io_cfg.read_timeout_s, io_cfg.read_retries)
        except FileNotFoundError:
            return records.fail(row, "read: file not found")
        except storage.StorageError as e:
            return records.fail(row, f"read: {redact_text(str(e))}")
        # A passed JPEG is written from its own compressed data (lossless, metadata removed) when
        # the output is JPEG too; the writer checks that no stage changed the pixels.
        want_copy = self.config.io.output_format in ("auto", "jpg")
        try:
            decoded = decode(data, self.limits, passthrough=want_copy)
        except ImageRejected as e:
            return records.fail(row, f"decode: {redact_text(str(e))}")
        records.set_image(row, decoded.pixels)
        row["lossless"] = decoded.lossless
        if decoded.passthrough is not None:
            row["passthrough"] = pack_passthrough(row["image"], decoded.passthrough)
        return row
