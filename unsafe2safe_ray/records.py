"""The output contract: row columns, status values and Parquet schemas.

Every stage reads and writes rows that follow ``PIPELINE_SCHEMA``. A stage works on its own
copy of each row (``stages.base.run_rows``), so a retried batch never sees a half-edited row.
Nested values are typed Arrow columns (lists of structs: ``REGION``, ``VERIFICATION``, ...),
so a consumer of the published tables reads them without decoding anything; the only free text
is the raw model output. Every box is in the frame ``BBOX_FRAME`` states.

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

# -- nested types ---------------------------------------------------------------------------------
# Boxes are in pixels of the decoded image (after EXIF rotation), [x0, y0, x1, y1] with x1 and y1
# exclusive: the frame of every region, leak and crop in a row. The field's metadata says so too.
BBOX_FRAME = {"frame": "decoded image", "units": "pixels", "order": "x0,y0,x1,y1", "exclusive": "x1,y1"}
BBOX = pa.list_(pa.float64(), 4)


def _bbox_field() -> pa.Field:
    return pa.field("bbox", BBOX, metadata=BBOX_FRAME)


# A sensitive region: what it is, where, how sure, who found it; ``text`` is the recognized
# string (private: only the pipeline and the private table carry it).
REGION = pa.struct([
    pa.field("category", pa.string()), _bbox_field(), pa.field("score", pa.float64()),
    pa.field("source", pa.string()), pa.field("kind", pa.string()), pa.field("text", pa.string()),
])
PUBLIC_REGION = pa.struct([f for f in REGION if f.name != "text"])
# One finding of the privacy check (detectors.verifier.leak_record): numbers and boxes only.
LEAK = pa.struct([
    pa.field("category", pa.string()), pa.field("kind", pa.string()), _bbox_field(),
    pa.field("distance", pa.float64()), pa.field("similarity", pa.float64()), pa.field("threshold", pa.float64()),
])
VERIFY_CHECKS = pa.struct([
    pa.field("faces_checked", pa.int64()), pa.field("edited_faces", pa.int64()), pa.field("faces_filled", pa.int64()),
    pa.field("min_face_distance", pa.float64()), pa.field("text_checked", pa.int64()),
    pa.field("max_text_similarity", pa.float64()),
])
EDIT_ATTEMPT = pa.struct([
    pa.field("strength", pa.int64()), pa.field("seed", pa.int64()), pa.field("scale", pa.float64()),
    pa.field("scope", pa.string()), pa.field("crops", pa.int64()), pa.field("classic", pa.string()),
    pa.field("error", pa.string()), pa.field("ok", pa.bool_()), pa.field("leaks", pa.list_(LEAK)),
])
# What the edit stage checked and how (publishable: numbers, boxes and names of checks only).
VERIFICATION = pa.struct([
    pa.field("verified", pa.bool_()), pa.field("ok", pa.bool_()),
    pa.field("checks_run", pa.list_(pa.string())), pa.field("checks_skipped", pa.list_(pa.string())),
    pa.field("scope", pa.string()), pa.field("fallback", pa.string()), pa.field("regions_dropped", pa.int64()),
    pa.field("attempts", pa.list_(EDIT_ATTEMPT)), pa.field("leaks", pa.list_(LEAK)),
    pa.field("checks", VERIFY_CHECKS), pa.field("vlm_boxes_dropped", pa.int64()),
    pa.field("text_redactions", pa.int64()), pa.field("text_leak_kinds", pa.list_(pa.string())),
    pa.field("text_leak_fields", pa.list_(pa.string())),
])

# Version of the publishable schema (captions table): 1 held regions / verification as JSON text,
# 2 has the nested types above. ``upgrade_table`` reads version 1.
SCHEMA_VERSION = "2"
_SCHEMA_METADATA = {"unsafe2safe.schema_version": SCHEMA_VERSION}

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
        ("categories", pa.list_(pa.string())),
        ("regions", pa.list_(REGION)),
        ("caption_source", pa.string()),
        ("prompt_version", pa.string()),
        ("privacy_review", pa.list_(pa.string())),  # private: what is visible and why it is sensitive
        ("private_caption", pa.string()),  # private
        ("public_caption", pa.string()),
        ("edit_instruction", pa.string()),
        ("combined_caption", pa.string()),
        ("raw_output", pa.string()),  # private: raw model text kept for debugging failed parses
        ("editor", pa.string()),
        ("verification", VERIFICATION),  # written by the edit stage (and the writer's text check)
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
        ("regions", pa.list_(PUBLIC_REGION)),  # no recognized text
        ("public_caption", pa.string()),
        ("edit_instruction", pa.string()),
        ("combined_caption", pa.string()),
        ("caption_source", pa.string()),
        ("prompt_version", pa.string()),
        ("editor", pa.string()),
        ("verification", VERIFICATION),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("seed", pa.int64()),
        ("image_tar", pa.string()),  # tar path relative to the output root; empty when failed
        ("image_member", pa.string()),  # <key>.jpg|png inside that tar; empty when failed
        ("run_id", pa.string()),
    ],
    metadata=_SCHEMA_METADATA,
)

# Sensitive per-image table (OUTPUT/private/). Never published, never logged.
PRIVATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("private_caption", pa.string()),
        ("privacy_review", pa.list_(pa.string())),
        ("raw_output", pa.string()),
        ("regions", pa.list_(REGION)),  # with recognized text; the captions table's copy has none
        ("run_id", pa.string()),
    ],
    metadata=_SCHEMA_METADATA,
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
        categories=[],
        regions=[],
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


def get_image(row: dict[str, Any]) -> np.ndarray | None:
    """The row's pixels as a read-only HxWx3 uint8 array (no copy)."""
    data = row.get("image")
    if data is None:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(row["height"], row["width"], 3)


def set_image(row: dict[str, Any], image: np.ndarray) -> None:
    """Store pixels in the row. ``image`` must be HxWx3 uint8 (else ``ValueError``); the row's
    size follows it."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    row["image"] = np.ascontiguousarray(image).tobytes()
    row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
    row["passthrough"] = None  # new pixels: the source JPEG no longer matches them


def public_regions(regions: list[dict] | None) -> list[dict]:
    """Regions without recognized text (plate numbers, names): what publishable files may hold."""
    return [{k: v for k, v in r.items() if k != "text"} for r in regions or []]


def update_verification(row: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the row's ``verification`` record (a new dict: rows are copied per
    attempt, never shared)."""
    row["verification"] = {**(row.get("verification") or {}), **fields}
    return row["verification"]


def _decode_json(value: Any) -> Any:

    return json.loads(value) if isinstance(value, str) and value else None


def upgrade_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table read from disk in ``schema``: version 1 files (regions, verification and the
    review as JSON text, no version metadata) are decoded into the nested types. Raises
    ``ValueError`` for a table that is neither version."""
    version = (table.schema.metadata or {}).get(b"unsafe2safe.schema_version", b"1").decode()
    if version == SCHEMA_VERSION:
        return table.select(schema.names).cast(schema)
    if version != "1":
        raise ValueError(f"unknown output schema version {version!r}; this reader knows 1 and {SCHEMA_VERSION}")
    rows = table.to_pylist()
    for row in rows:
        for name in ("regions", "verification", "privacy_review", "categories"):
            if isinstance(row.get(name), str):
                row[name] = _decode_json(row[name])
        if isinstance(row.get("privacy_review"), list):
            row["privacy_review"] = [r if isinstance(r, str) else ": ".join(str(v) for v in r.values())
                                     for r in row["privacy_review"]]
    return pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows], schema=schema)
