"""Deterministic shard plans, saved under ``OUTPUT/_plan/`` and reused by every rerun."""

from __future__ import annotations

import hashlib
import io
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unsafe2safe_ray.plan.listing import InputListing, list_input
from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.layout import OutputLayout
from unsafe2safe_ray.storage.redact import redact_uri

PLAN_VERSION = 1
PLAN_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int64()),
                         ("source_uri", pa.string()), ("label", pa.string())])


class PlanError(ValueError):
    """The saved plan and the request disagree; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """What a job covers: ``shard_counts[i]`` images in shard ``i``."""

    input_uri: str
    kind: str
    num_images: int
    shard_size: int
    shard_counts: list[int]
    listing_digest: str
    # Files the listing skipped, by reason, and duplicate spellings dropped (see plan.listing).
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def num_shards(self) -> int:
        return len(self.shard_counts)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION, "input_uri": redact_uri(self.input_uri), "kind": self.kind,
            "num_images": self.num_images, "shard_size": self.shard_size,
            "num_shards": self.num_shards, "shard_counts": self.shard_counts,
            "listing_digest": self.listing_digest, "created_at": time.time(),
            "skipped": dict(self.skipped), "duplicates": self.duplicates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Plan":
        return cls(data["input_uri"], data["kind"], data["num_images"], data["shard_size"],
                   list(data["shard_counts"]), data["listing_digest"], dict(data.get("skipped") or {}),
                   int(data.get("duplicates") or 0))


def image_key(index: int) -> str:
    """Stable key of the index-th image of the sorted listing (no dots: WebDataset-safe)."""
    return f"{index:09d}"


def listing_digest(listing: InputListing) -> str:
    h = hashlib.sha256()
    for uri, label in zip(listing.uris, listing.labels):
        h.update(uri.encode())
        h.update(b"\x00")
        h.update((label or "").encode())
        h.update(b"\x01")
    return h.hexdigest()


def make_or_load_plan(layout: OutputLayout, input_uri: str, shard_size: int,
                      storage_options: dict[str, Any] | None = None, allow_prefixes: list[str] | tuple = ()) -> Plan:
    """Load ``_plan/`` if present and check the input still lists the same; else create it.
    ``allow_prefixes``: where a manifest may point besides its own folder (``plan.listing``)."""
    listing = list_input(input_uri, storage_options, allow_prefixes)
    digest = listing_digest(listing)
    saved = load_plan(layout)
    if saved is not None:
        if digest != saved.listing_digest:
            raise PlanError(
                f"the input listing changed since the plan in {layout.root_uri}/_plan was made "
                f"({saved.num_images} planned images, {len(listing.uris)} listed now). "
                "Restore the input, or write to a new --output."
            )
        if shard_size != saved.shard_size:
            raise PlanError(
                f"shard size {shard_size} (--shard-size or io.shard_size) differs from the saved plan's "
                f"{saved.shard_size}; give no shard size to reuse the plan, or write to a new --output."
            )
        return saved
    counts = [min(shard_size, len(listing.uris) - start) for start in range(0, len(listing.uris), shard_size)]
    plan = Plan(input_uri, listing.kind, len(listing.uris), shard_size, counts, digest, listing.skipped,
                listing.duplicates)
    table = pa.table({
        "key": [image_key(i) for i in range(len(listing.uris))],
        "shard": [i // shard_size for i in range(len(listing.uris))],
        "source_uri": listing.uris,
        "label": listing.labels,
    }, schema=PLAN_SCHEMA)
    buf = io.BytesIO()
    # One row group per shard: a worker reading one shard's rows skips every other group.
    pq.write_table(table, buf, row_group_size=shard_size)
    storage.atomic_write(layout.fs, layout.plan_images, buf.getvalue())
    # plan.json last: its presence means the plan is complete.
    storage.write_json(layout.fs, layout.plan_json, plan.to_json())
    return plan


def plan_from_output(layout: OutputLayout, earlier: OutputLayout) -> Plan:
    """For ``--stages edit``: reuse the plan of an earlier (inspect-only) output, so keys and
    shards line up with its captions."""
    source = load_plan(earlier)
    if source is None:
        raise PlanError(f"{earlier.root_uri} has no _plan/plan.json; --stages edit needs the output "
                        "of an earlier `--stages inspect` run as --input")
    saved = load_plan(layout)
    if saved is not None:
        if saved.listing_digest != source.listing_digest:
            raise PlanError(f"{layout.root_uri} was planned from another input; write to a new --output")
        return saved
    with earlier.fs.open(earlier.plan_images, "rb") as f:
        storage.atomic_write(layout.fs, layout.plan_images, f.read())
    storage.write_json(layout.fs, layout.plan_json, source.to_json())
    return source


def load_plan(layout: OutputLayout) -> Plan | None:
    if not layout.fs.exists(layout.plan_json):
        return None
    return Plan.from_json(storage.read_json(layout.fs, layout.plan_json))


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_shard_list(spec: str, num_shards: int) -> list[int]:
    """``"3,7-9"`` -> [3, 7, 8, 9], checked against the plan."""
    out: set[int] = set()
    for part in spec.split(","):
        m = _RANGE.match(part.strip())
        if not m:
            raise PlanError(f"--shards: cannot parse {part!r}; use pending, failed, damaged, all or a list like 3,7-9")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if hi < lo:
            raise PlanError(f"--shards: range {part!r} is reversed")
        if hi >= num_shards:
            raise PlanError(f"--shards: shard {hi} does not exist (the plan has {num_shards} shards, 0-{num_shards - 1})")
        out.update(range(lo, hi + 1))
    return sorted(out)


def select_shards(spec: str, plan: Plan, commits: dict[int, dict], layout: OutputLayout | None = None) -> list[int]:
    """Shards to (re)process: ``pending`` (no commit), ``failed`` (committed with failed rows),
    ``damaged`` (committed with a file that is missing, resized or altered: what
    ``unsafe2safe status --verify`` lists; needs ``layout`` and reads every committed byte),
    ``all``, or an explicit list. Raises ``PlanError`` for a spec it cannot parse."""
    if spec == "pending":
        return [s for s in range(plan.num_shards) if s not in commits]
    if spec == "failed":
        return sorted(s for s, c in commits.items() if c["counts"]["failed"] > 0)
    if spec == "damaged":
        if layout is None:
            raise PlanError("--shards damaged needs the output to check")
        from unsafe2safe_ray.storage.commits import damaged_shards

        return [s for s in damaged_shards(layout, commits, checksums=True) if s < plan.num_shards]
    if spec == "all":
        return list(range(plan.num_shards))
    return parse_shard_list(spec, plan.num_shards)


def plan_chunks(plan: Plan, shards: list[int], chunk_rows: int) -> list[dict[str, int]]:
    """Work items ``{shard, offset, count}``: a few per shard, so that one shard's images can
    spread over several workers. The driver holds only these small items, never image rows."""
    items = []
    for shard in shards:
        count = plan.shard_counts[shard]
        items.extend({"shard": shard, "offset": o, "count": min(chunk_rows, count - o)}
                     for o in range(0, count, chunk_rows))
    return items


def read_plan_chunk(layout: OutputLayout, shard: int, offset: int, count: int) -> list[dict[str, Any]]:
    """The planned rows of one work item (row-group statistics skip the other shards)."""
    with layout.fs.open(layout.plan_images, "rb") as f:
        table = pq.read_table(f, filters=[("shard", "==", shard)], schema=PLAN_SCHEMA)
    return table.slice(offset, count).to_pylist()
