"""The output contract: row columns, status values and Parquet schemas.

Every stage reads and writes rows that follow ``PIPELINE_SCHEMA``. A stage works on its own
copy of each row (``stages.base.run_rows``), so a retried batch never sees a half-edited row. Lists and nested values
(categories, regions, verification) travel as JSON strings so that every Ray block has the same
flat Arrow schema; the writer turns ``categories`` into a real ``list<string>`` column.

This module imports nothing heavier than pyarrow and numpy: storage, planning and commit logic
depend on it and must stay model-free.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np
import pyarrow as pa

# Status values of a row. A row starts "pending"; the writer turns every row into exactly one of
# the three final values.
PENDING = "pending"
EDITED = "edited"
PASSED = "passed"
FAILED = "failed"
FINAL_STATUSES = (EDITED, PASSED, FAILED)

# Paper category names (Unsafe2Safe, nine privacy categories).
CATEGORIES = (
    "people",
    "appearance",
    "health",
    "text_and_symbols",
    "locations_and_timestamps",
    "personal_interactions",
    "professional_or_school",
    "cultural_political_religious",
    "private_belongings",
)

# Columns every stage sees. ``image`` holds raw RGB pixels (uint8, row-major HxWx3) so that no
# stage pays for an encode/decode round trip and Ray never pickles PIL objects.
PIPELINE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("label", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_stage", pa.string()),  # the stage that failed the row ("" unless failed)
        ("lossless", pa.bool_()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("image", pa.binary()),
        # decode: a digest of ``image`` + the source JPEG without metadata (imaging.pack_passthrough);
        # the writer copies it for a passed row whose pixels no stage changed (lossless).
        ("passthrough", pa.binary()),
        ("privacy_flag", pa.bool_()),
        ("flagged_by", pa.string()),  # vlm, detector, vlm+detector: who flagged the row
        ("categories", pa.string()),  # JSON list[str]
        ("regions", pa.string()),  # JSON list[{category, bbox:[x0,y0,x1,y1], score, text?, source}]
        ("caption_source", pa.string()),
        ("prompt_version", pa.string()),
        ("privacy_review", pa.string()),  # private
        ("private_caption", pa.string()),  # private
        ("public_caption", pa.string()),
        ("edit_instruction", pa.string()),
        ("combined_caption", pa.string()),
        ("raw_output", pa.string()),  # private: raw model text kept for debugging failed parses
        ("editor", pa.string()),
        ("verification", pa.string()),  # JSON dict written by the verify stage
        ("stage_seconds", pa.string()),  # JSON {stage: seconds} accumulated per row
    ]
)
PIPELINE_COLUMNS = tuple(PIPELINE_SCHEMA.names)

# Publishable per-image table (OUTPUT/captions/).
CAPTIONS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("label", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("error_stage", pa.string()),  # which stage failed the row (decode, detect, edit, write, ...)
        ("privacy_flag", pa.bool_()),
        ("flagged_by", pa.string()),  # vlm, detector, vlm+detector ("" when not flagged)
        ("categories", pa.list_(pa.string())),
        ("regions", pa.string()),
        ("public_caption", pa.string()),
        ("edit_instruction", pa.string()),
        ("combined_caption", pa.string()),
        ("caption_source", pa.string()),
        ("prompt_version", pa.string()),
        ("editor", pa.string()),
        ("verification", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("seed", pa.int64()),
        ("image_tar", pa.string()),  # tar path relative to the output root; empty when failed
        ("image_member", pa.string()),  # <key>.jpg|png inside that tar; empty when failed
        ("run_id", pa.string()),
    ]
)

# Sensitive per-image table (OUTPUT/private/). Never published, never logged.
PRIVATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("private_caption", pa.string()),
        ("privacy_review", pa.string()),
        ("raw_output", pa.string()),
        ("regions", pa.string()),  # with recognized text; the captions table's copy has none
        ("run_id", pa.string()),
    ]
)

PRIVATE_FIELDS = ("private_caption", "privacy_review", "raw_output")


def new_row(key: str, shard: int, source_uri: str, label: str | None, seed: int) -> dict[str, Any]:
    """A pending row as planned, before any stage has run."""
    row: dict[str, Any] = {name: None for name in PIPELINE_COLUMNS}
    row.update(
        key=key,
        shard=shard,
        source_uri=source_uri,
        label=label,
        seed=seed,
        status=PENDING,
        error="",
        error_stage="",
        privacy_flag=False,
        flagged_by="",
        categories="[]",
        regions="[]",
    )
    return row


def derive_seed(base_seed: int, key: str) -> int:
    """A per-image seed from the image key, so reruns reproduce the same pixels."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


_STAGE_PREFIX = re.compile(r"^([a-z][a-z0-9_]*): ")


def fail(row: dict[str, Any], error: str, stage: str | None = None) -> dict[str, Any]:
    """Mark a row failed and drop its pixels: a failed row never carries an image onwards.

    ``stage`` goes to ``error_stage``; by default it is the ``"<stage>: "`` prefix that every
    error message starts with (``"unknown"`` when there is none).
    """
    if stage is None:
        match = _STAGE_PREFIX.match(error)
        stage = match.group(1) if match else "unknown"
    row["status"] = FAILED
    row["error"] = error[:2000]
    row["error_stage"] = stage
    row["image"] = None
    row["passthrough"] = None
    return row


def is_live(row: dict[str, Any]) -> bool:
    """A row that stages should still work on."""
    return row.get("status") != FAILED


def get_image(row: dict[str, Any], column: str = "image") -> np.ndarray | None:
    """The row's pixels as a read-only HxWx3 uint8 array (no copy)."""
    data = row.get(column)
    if data is None:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(row["height"], row["width"], 3)


def set_image(row: dict[str, Any], image: np.ndarray, column: str = "image") -> None:
    """Store pixels in the row. ``image`` must be HxWx3 uint8; the row's size follows it."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if column != "image" and (image.shape[0], image.shape[1]) != (row["height"], row["width"]):
        raise ValueError("original_image must have the same size as image")
    row[column] = np.ascontiguousarray(image).tobytes()
    if column == "image":
        row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
        row["passthrough"] = None  # new pixels: the source JPEG no longer matches them


def public_regions(value: str | None) -> str:
    """Regions without recognized text (plate numbers, names): what publishable files may hold."""
    return json.dumps([{k: v for k, v in r.items() if k != "text"} for r in json_list(value)])


def json_list(value: str | None) -> list:
    """Decode a JSON list column (None or empty means an empty list)."""
    return json.loads(value) if value else []


def json_dict(value: str | None) -> dict:
    """Decode a JSON object column (None or empty means an empty dict)."""
    return json.loads(value) if value else {}


def add_stage_time(row: dict[str, Any], stage: str, seconds: float) -> None:
    """Accumulate the time a stage spent on this row (batch time split evenly)."""
    times = json_dict(row.get("stage_seconds"))
    times[stage] = round(times.get(stage, 0.0) + seconds, 6)
    row["stage_seconds"] = json.dumps(times)
