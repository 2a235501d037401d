"""Pairs to evaluate: (original, anonymized) rows built from an output or from a folder.

Two kinds of anonymized source are accepted:

- a pipeline output (it has ``_commits/``): read through ``unsafe2safe_ray.output.open_output``,
  one committed part per Ray task (``CommittedOutput.parts`` / ``iter_part``), so the driver
  never holds the samples; each committed row names its original by ``source_uri`` and carries
  regions and captions;
- a plain folder of images (a baseline from another tool, e.g. deface): files are matched to the
  originals by their relative path without extension (a ``_anonymized`` suffix is ignored).

``pair_dataset`` returns one Ray Dataset of pair rows (``PAIR_SCHEMA``) over every method.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.storage.fs import filesystem

# Suffixes other anonymizers append to file names (deface writes NAME_anonymized.jpg).
TOOL_SUFFIXES = ("_anonymized",)
# Pair rows per Arrow batch read from a committed part (raw RGB of the output travels with them).
PART_BATCH_ROWS = 32
# Blocks a folder baseline's pair table is cut into (parallelism of the scoring actors).
FOLDER_BLOCKS = 64


def pair_schema():
    """The pair rows' columns, typed once so that every Ray block agrees."""
    import pyarrow as pa

    text = pa.string()
    return pa.schema([
        ("method", text), ("key", text), ("source_uri", text), ("label", text), ("status", text),
        ("regions", pa.list_(records.REGION)), ("public_caption", text), ("edited_caption", text),
        ("anonymized_uri", text),
        ("anonymized", pa.binary()), ("anonymized_height", pa.int64()), ("anonymized_width", pa.int64()),
    ])


def is_pipeline_output(uri: str, storage_options: dict | None = None) -> bool:
    """Whether ``uri`` is an output of ``run_job`` (it holds commit markers)."""
    fs, path = filesystem(uri, storage_options)
    return fs.exists(posixpath.join(path.rstrip("/"), "_commits"))


def parse_methods(anonymized: str) -> dict[str, str]:
    """``"a=URI1,URI2"`` -> {"a": URI1, "<basename of URI2>": URI2}, in order."""
    methods: dict[str, str] = {}
    for item in (part.strip() for part in anonymized.split(",")):
        if not item:
            continue
        name, sep, uri = item.partition("=")
        if not sep or "://" in name:
            uri, name = item, posixpath.basename(item.rstrip("/")) or item
        if name in methods:
            name = f"{name}-{len(methods)}"
        methods[name] = uri
    if not methods:
        raise ValueError("no anonymized output given")
    return methods


def _pair_row(method: str, key: str, source_uri: str, **fields: Any) -> dict[str, Any]:
    row = {
        "method": method, "key": key, "source_uri": source_uri, "label": None,
        "status": records.EDITED, "regions": [], "public_caption": None, "edited_caption": None,
        "anonymized_uri": None, "anonymized": None, "anonymized_height": None, "anonymized_width": None,
    }
    row.update(fields)
    return row


def edited_caption(caption: dict) -> str | None:
    """The caption of the intended output: the combined caption, else public + instruction."""
    if caption.get("combined_caption"):
        return caption["combined_caption"]
    if caption.get("public_caption") and caption.get("edit_instruction"):
        return f"{caption['public_caption']} {caption['edit_instruction']}"
    return None


def sample_pair_row(method: str, sample: dict[str, Any]) -> dict[str, Any]:
    """The pair row of one ``iter_samples`` sample (failed rows included, without pixels)."""
    caption = sample["caption"]
    image = sample.get("image")
    return _pair_row(
        method, sample["key"], caption["source_uri"],
        label=caption.get("label"), status=caption.get("status") or records.EDITED,
        regions=list(caption.get("regions") or []), public_caption=caption.get("public_caption"),
        edited_caption=edited_caption(caption),
        anonymized=None if image is None else image.tobytes(),
        anonymized_height=None if image is None else int(image.shape[0]),
        anonymized_width=None if image is None else int(image.shape[1]),
    )


def output_pairs(method: str, uri: str, storage_options: dict | None = None) -> Iterator[dict[str, Any]]:
    """One pair row per committed sample of a pipeline output, streamed in this process."""
    from unsafe2safe_ray.output import open_output

    for sample in open_output(uri, storage_options=storage_options).iter_samples():
        yield sample_pair_row(method, sample)


def output_pair_dataset(method: str, uri: str, storage_options: dict | None = None):
    """A Ray Dataset of the pair rows of a pipeline output: one read task per committed part
    (operator ``read_pairs``), through the users' reader (``open_output``: committed files only,
    each checked against its marker). Returns (dataset, number of parts)."""
    import pyarrow as pa
    import ray

    from unsafe2safe_ray.output import open_output
    from unsafe2safe_ray.stages.base import Resources, map_batches

    reader = open_output(uri, storage_options=storage_options)
    parts = reader.parts()
    schema = pair_schema()

    def read_parts(batch: pa.Table) -> Iterator[pa.Table]:
        for part in batch.to_pylist():
            part = {"shard": part["shard"], "captions": part["captions"], "images": part["images"] or None}
            rows: list[dict[str, Any]] = []
            for sample in reader.iter_part(part):
                rows.append(sample_pair_row(method, sample))
                if len(rows) >= PART_BATCH_ROWS:
                    yield pa.Table.from_pylist(rows, schema=schema)
                    rows = []
            if rows:
                yield pa.Table.from_pylist(rows, schema=schema)

    if not parts:
        return None, 0
    items = [{"shard": p["shard"], "captions": p["captions"], "images": p["images"] or ""} for p in parts]
    ds = ray.data.from_items(items, override_num_blocks=len(items))  # one read task per part
    return map_batches(ds, read_parts, name="read_pairs", resources=Resources(num_cpus=0.5, batch_size=1)), len(parts)


def _relative_stems(uri: str, storage_options: dict | None) -> dict[str, str]:
    from unsafe2safe_ray.plan.listing import list_input

    fs, root = filesystem(uri, storage_options)
    root_uri = fs.unstrip_protocol(root.rstrip("/"))
    stems = {}
    for file_uri in list_input(uri, storage_options).uris:
        relative = file_uri[len(root_uri):].lstrip("/") if file_uri.startswith(root_uri) else posixpath.basename(file_uri)
        stem = posixpath.splitext(relative)[0]
        for suffix in TOOL_SUFFIXES:
            stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        stems[stem] = file_uri
    return stems


def folder_pairs(method: str, original: str, anonymized: str,
                 storage_options: dict | None = None) -> list[dict[str, Any]]:
    """Pairs of same-named images in two folders; an original with no output is a failed row."""
    from unsafe2safe_ray.plan.listing import list_input

    listing = list_input(original, storage_options)
    labels = dict(zip(listing.uris, listing.labels))
    outputs = _relative_stems(anonymized, storage_options)
    rows = []
    for stem, source_uri in sorted(_relative_stems(original, storage_options).items()):
        found = outputs.get(stem)
        rows.append(_pair_row(
            method, stem, source_uri, label=labels.get(source_uri),
            status=records.EDITED if found else records.FAILED, anonymized_uri=found,
        ))
    return rows


def folder_pair_dataset(method: str, original: str, anonymized: str, storage_options: dict | None = None):
    """A Ray Dataset of ``folder_pairs`` (names only: the scoring actors read the pixels).
    Matching names needs both listings, which the driver holds as one Arrow table of URIs.
    Returns (dataset, number of pairs)."""
    import pyarrow as pa
    import ray

    table = pa.Table.from_pylist(folder_pairs(method, original, anonymized, storage_options), schema=pair_schema())
    if table.num_rows == 0:
        return None, 0
    blocks = max(1, min(table.num_rows, FOLDER_BLOCKS))
    step = -(-table.num_rows // blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)]), table.num_rows


def pair_dataset(original: str, methods: dict[str, str], storage_options: dict | None = None):
    """One Ray Dataset of the pair rows of every method (pipeline outputs and plain folders
    alike), in method order; None when there is nothing to pair."""
    datasets = []
    for method, uri in methods.items():
        if is_pipeline_output(uri, storage_options):
            ds, count = output_pair_dataset(method, uri, storage_options)
        else:
            ds, count = folder_pair_dataset(method, original, uri, storage_options)
        if count:
            datasets.append(ds)
    if not datasets:
        return None
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def build_pairs(original: str, methods: dict[str, str], storage_options: dict | None = None) -> list[dict]:
    """Pair rows of every method as one list in this process (small inputs, tests); the
    evaluate job streams ``pair_dataset`` instead."""
    rows: list[dict] = []
    for method, uri in methods.items():
        if is_pipeline_output(uri, storage_options):
            rows.extend(output_pairs(method, uri, storage_options))
        else:
            rows.extend(folder_pairs(method, original, uri, storage_options))
    return rows
