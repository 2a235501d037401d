"""Pairs to evaluate: (original, anonymized) rows built from an output or from a folder.

Two kinds of anonymized source are accepted:

- a pipeline output (it has ``_commits/``): read through ``unsafe2safe_ray.output.open_output``;
  each committed row names its original by ``source_uri`` and carries regions and captions;
- a plain folder of images (a baseline from another tool, e.g. deface): files are matched to the
  originals by their relative path without extension (a ``_anonymized`` suffix is ignored).
"""

from __future__ import annotations

import posixpath
from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.storage.fs import filesystem

# Suffixes other anonymizers append to file names (deface writes NAME_anonymized.jpg).
TOOL_SUFFIXES = ("_anonymized",)


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
        "status": records.EDITED, "regions": "[]", "public_caption": None, "edited_caption": None,
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


def output_pairs(method: str, uri: str, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """One pair row per committed sample of a pipeline output (failed rows included, no pixels)."""
    from unsafe2safe_ray.output import open_output

    rows = []
    for sample in open_output(uri, storage_options=storage_options).iter_samples():
        caption = sample["caption"]
        image = sample.get("image")
        rows.append(_pair_row(
            method, sample["key"], caption["source_uri"],
            label=caption.get("label"), status=caption.get("status") or records.EDITED,
            regions=caption.get("regions") or "[]", public_caption=caption.get("public_caption"),
            edited_caption=edited_caption(caption),
            anonymized=None if image is None else image.tobytes(),
            anonymized_height=None if image is None else int(image.shape[0]),
            anonymized_width=None if image is None else int(image.shape[1]),
        ))
    return rows


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


def build_pairs(original: str, methods: dict[str, str], storage_options: dict | None = None) -> list[dict]:
    """Pair rows of every method, pipeline outputs and plain folders alike."""
    rows: list[dict] = []
    for method, uri in methods.items():
        if is_pipeline_output(uri, storage_options):
            rows.extend(output_pairs(method, uri, storage_options))
        else:
            rows.extend(folder_pairs(method, original, uri, storage_options))
    return rows
