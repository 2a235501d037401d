"""Commit markers: ``_commits/shard-NNNNN.json`` is written last and is the only meaning of done.

A marker is data, never a path to trust: every entry is checked by ``validate_marker`` (or, one
name at a time, ``validate_file_name``) before anything it names is read or deleted. A valid entry
is a bare ``<folder>/<file>`` name inside the output's own data folders (``images/``,
``captions/``, ``private/``) whose file name carries the marker's shard. Markers written since
version 2 also record each file's size and SHA-256 (``file_info``), which ``verify_markers``
checks; older markers are read as before but are reported as unverifiable.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, Iterable

from unsafe2safe_ray.storage import fs as storage
from unsafe2safe_ray.storage.layout import COMMITS, DATA_DIRS, OutputLayout, shard_of_file

VERSIONED_PACKAGES = ("unsafe2safe-ray", "ray", "pyarrow", "pillow", "torch", "transformers",
                      "diffusers", "vllm", "onnxruntime", "rapidocr")
MARKER_VERSION = 2
CHECKSUM = "sha256"
# What a data file may be called: shard-NNNNN-<run id>-<part>.<ext> (or a writer's temporary
# ``.tmp-<hex>-shard-...``, which deleters may remove but a marker never lists: no shard).
_DATA_NAME = re.compile(r"^(\.tmp-[0-9a-f]+-)?shard-\d{5,}-[A-Za-z0-9_.-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MARKER_NAME = re.compile(r"^shard-(\d{5,})\.json$")


class MarkerError(ValueError):
    """A commit marker that is malformed or names a file outside the output's own data folders
    (``..``, an absolute path, a URI with a scheme, another bucket, another shard's file).
    Nothing it names is read or deleted; the message names the marker and the bad entry."""


class IntegrityError(RuntimeError):
    """A committed file is missing or is not what its marker recorded (size or checksum), or a
    committed ``edited``/``passed`` row has no image. The message names the file and the shard;
    ``unsafe2safe run --shards damaged`` rewrites such shards."""


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _where(layout: OutputLayout, shard: Any, source: str | None) -> str:
    if source:
        return source
    if isinstance(shard, int):
        return layout.commit(shard)
    return f"a commit marker in {layout.path(COMMITS)}"


def validate_file_name(layout: OutputLayout, rel: Any, shard: int | None = None, kind: str | None = None,
                       where: str = "a commit marker") -> str:
    """Check one marker entry and return it unchanged.

    Raises ``MarkerError`` unless ``rel`` is ``<data folder>/shard-NNNNN-<run>-<part>.<ext>``:
    a relative name without ``..``, ``.``, empty parts, backslashes, a scheme or a leading ``/``,
    directly inside one of the output's data folders (``kind``'s own folder when given), whose
    file name carries ``shard`` (when given), and which resolves under the output root.
    """
    def bad(why: str) -> MarkerError:
        return MarkerError(f"{where}: refusing entry {rel!r}: {why}; remove or restore the marker "
                           "(the shard is then reprocessed) before running again")

    if not isinstance(rel, str) or not rel:
        raise bad("not a file name")
    if "://" in rel or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", rel):
        raise bad("a URI with a scheme, not a name inside this output")
    if rel.startswith(("/", "~")) or "\\" in rel or "\x00" in rel:
        raise bad("an absolute or non-portable path")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise bad("a path with '..', '.' or empty parts")
    if len(parts) != 2 or parts[0] not in DATA_DIRS:
        raise bad(f"not directly inside the output's data folders ({', '.join(DATA_DIRS)})")
    if kind is not None and parts[0] != kind:
        raise bad(f"listed as {kind!r} but inside {parts[0]}/")
    if not _DATA_NAME.match(parts[1]):
        raise bad("not a data file name (shard-NNNNN-<run>-<part>.<ext>)")
    if shard is not None and shard_of_file(parts[1]) != shard:
        raise bad(f"a file of shard {shard_of_file(parts[1])}, not of shard {shard}")
    if not layout.path(rel).startswith(layout.root + "/"):
        raise bad("outside the output root")
    return rel


def validate_marker(layout: OutputLayout, marker: Any, source: str | None = None) -> dict[str, Any]:
    """Check a whole marker before anything it names is read or deleted; returns it.

    Raises ``MarkerError`` (naming the marker, ``source`` when given) when it is not an object,
    its ``shard`` is not a non-negative integer (or not the shard its file name says), ``counts``
    or ``files`` are malformed, any entry fails ``validate_file_name``, or ``file_info`` records
    a file the marker does not list or a size/checksum of the wrong type.
    """
    where = _where(layout, marker.get("shard") if isinstance(marker, dict) else None, source)
    if not isinstance(marker, dict):
        raise MarkerError(f"{where}: not a JSON object")
    shard = marker.get("shard")
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise MarkerError(f"{where}: 'shard' must be a non-negative integer, got {shard!r}")
    if source:
        m = _MARKER_NAME.match(source.rsplit("/", 1)[-1])
        if not m or int(m.group(1)) != shard:
            raise MarkerError(f"{where}: holds shard {shard}, which is not the shard its file name says")
    counts = marker.get("counts")
    if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
        raise MarkerError(f"{where}: 'counts' must map statuses to integers")
    files = marker.get("files")
    if not isinstance(files, dict):
        raise MarkerError(f"{where}: 'files' must map data folders to lists of names")
    listed: set[str] = set()
    for kind, names in files.items():
        if kind not in DATA_DIRS:
            raise MarkerError(f"{where}: unknown file kind {kind!r} (expected {', '.join(DATA_DIRS)})")
        if not isinstance(names, list):
            raise MarkerError(f"{where}: 'files.{kind}' must be a list of names")
        for rel in names:
            listed.add(validate_file_name(layout, rel, shard, kind, where))
    info = marker.get("file_info")
    if info is not None:
        if not isinstance(info, dict):
            raise MarkerError(f"{where}: 'file_info' must map file names to size and checksum")
        for rel, entry in info.items():
            if rel not in listed:
                raise MarkerError(f"{where}: 'file_info' names {rel!r}, which the marker does not list")
            size = entry.get("size") if isinstance(entry, dict) else None
            digest = entry.get(CHECKSUM) if isinstance(entry, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or \
                    (digest is not None and not (isinstance(digest, str) and _HEX64.match(digest))):
                raise MarkerError(f"{where}: 'file_info' of {rel!r} must hold a size and a {CHECKSUM} hex digest")
    return marker


def read_commits(layout: OutputLayout) -> dict[int, dict[str, Any]]:
    """All commit markers, by shard, each checked by ``validate_marker``. Reads only
    ``_commits/`` (one small file per shard).

    Raises ``MarkerError`` naming the first marker that is not valid JSON or fails validation.
    """
    directory = layout.path(COMMITS)
    layout.fs.invalidate_cache(directory)  # a cached listing would hide markers written since
    if not layout.fs.exists(directory):
        return {}
    # Only marker names: a temporary file of a marker being written (``.tmp-*``) is not one.
    paths = [p for p in layout.fs.ls(directory, detail=False) if _MARKER_NAME.match(p.rstrip("/").rsplit("/", 1)[-1])]

    def load(p: str) -> dict[str, Any]:
        with layout.fs.open(p, "rb") as f:
            data = f.read()
        try:
            marker = json.loads(data)
        except ValueError as e:
            raise MarkerError(f"{p}: not valid JSON ({e}); remove or restore the marker") from None
        return validate_marker(layout, marker, source=p)

    with ThreadPoolExecutor(max_workers=16) as pool:
        markers = list(pool.map(load, paths))
    return {m["shard"]: m for m in markers}


def file_entry(rel: str, data: bytes) -> dict[str, Any]:
    """What a writer reports for one written file: its name, size and checksum."""
    return {"path": rel, "size": len(data), CHECKSUM: hashlib.sha256(data).hexdigest()}


def part_files(files_json: str | dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(kind, relative name, {size, sha256} or None) for a writer's ``files`` summary, which maps
    each kind to ``file_entry(...)`` (or, from older writers, to a bare name)."""
    files = json.loads(files_json) if isinstance(files_json, str) else files_json
    out = []
    for kind, entry in files.items():
        if isinstance(entry, dict):
            out.append((kind, entry["path"], {k: entry[k] for k in ("size", CHECKSUM) if k in entry}))
        else:
            out.append((kind, entry, None))
    return out


def write_commit(layout: OutputLayout, shard: int, run_id: str, counts: dict[str, int],
                 files: dict[str, Iterable[str]], config_digest: str, versions: dict[str, str],
                 file_info: dict[str, dict[str, Any]] | None = None,
                 previous_config_digests: list[str] | None = None) -> dict[str, Any]:
    """Write the marker of a shard whose files are all durable.

    ``file_info`` maps each listed name to its ``size`` and ``sha256`` (as the writer reported
    them). Raises ``MarkerError`` if an entry would not pass ``validate_marker``: a marker that
    could not be read back is never written.
    """
    names = {k: sorted(v) for k, v in files.items()}
    listed = {rel for v in names.values() for rel in v}
    marker = {
        "version": MARKER_VERSION,
        "shard": shard,
        "run_id": run_id,
        "counts": counts,
        "files": names,
        "file_info": {rel: info for rel, info in sorted((file_info or {}).items()) if rel in listed},
        "config_digest": config_digest,
        # Set when a rerun changed the config on purpose (--allow-config-change).
        "previous_config_digests": sorted(previous_config_digests or []),
        "versions": versions,
        "committed_at": time.time(),
    }
    validate_marker(layout, marker, source=layout.commit(shard))
    storage.write_json(layout.fs, layout.commit(shard), marker)
    return marker


def referenced_files(marker: dict[str, Any] | None) -> set[str]:
    """Names (relative to the output root) of the files a marker lists. Validate the marker first
    (``read_commits`` does) before reading or deleting any of them."""
    if not marker:
        return set()
    return {f for files in marker["files"].values() for f in files}


def data_files_of_shards(layout: OutputLayout, shards: set[int]) -> set[str]:
    """Relative paths of every data file that belongs to one of ``shards``."""
    out: set[str] = set()
    for d in DATA_DIRS:
        directory = layout.path(d)
        if not layout.fs.exists(directory):
            continue
        for p in layout.fs.ls(directory, detail=False):
            if shard_of_file(p) in shards:
                out.add(layout.relative(p.rstrip("/")))
    return out


def remove_files(layout: OutputLayout, relative_paths: Iterable[str]) -> None:
    """Delete data files of this output. Every name is checked first (``validate_file_name``):
    raises ``MarkerError`` and deletes nothing if any of them is not a data file of this output."""
    names = sorted(relative_paths)
    for rel in names:
        validate_file_name(layout, rel, where="refusing to delete")
    for rel in names:
        try:
            layout.fs.rm(layout.path(rel))
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------------------
# Integrity: sizes (cheap, from directory listings) and checksums (read every byte).

def _listed_sizes(layout: OutputLayout) -> dict[str, int]:
    """{relative name: size} of every file in the data folders (one listing per folder)."""
    out: dict[str, int] = {}
    for d in DATA_DIRS:
        directory = layout.path(d)
        layout.fs.invalidate_cache(directory)
        try:
            entries = layout.fs.ls(directory, detail=True)
        except FileNotFoundError:
            continue
        for e in entries:
            if e.get("type") == "file":
                out[layout.relative(e["name"].rstrip("/"))] = int(e.get("size") or 0)
    return out


def file_checksum(layout: OutputLayout, rel: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with layout.fs.open(layout.path(rel), "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def verify_markers(layout: OutputLayout, markers: dict[int, dict[str, Any]],
                   checksums: bool = False) -> tuple[dict[int, list[str]], list[int]]:
    """Check committed files against their markers.

    Returns ``(damaged, unverifiable)``: ``damaged`` maps a shard to one line per bad file
    (missing, wrong size, and with ``checksums`` a SHA-256 that differs: this reads every byte);
    ``unverifiable`` lists shards whose markers predate sizes and checksums (only the presence
    of their files is checked).
    """
    sizes = _listed_sizes(layout)
    damaged: dict[int, list[str]] = {}
    unverifiable: list[int] = []
    to_hash: list[tuple[int, str, str]] = []
    for shard, marker in sorted(markers.items()):
        info = marker.get("file_info") or {}
        problems: list[str] = []
        if not info:
            unverifiable.append(shard)
        for rel in sorted(referenced_files(marker)):
            recorded = info.get(rel)
            if rel not in sizes:
                problems.append(f"{rel}: missing")
            elif recorded is not None and sizes[rel] != recorded["size"]:
                problems.append(f"{rel}: {sizes[rel]} bytes, marker recorded {recorded['size']}")
            elif checksums and recorded is not None and recorded.get(CHECKSUM):
                to_hash.append((shard, rel, recorded[CHECKSUM]))
        if problems:
            damaged[shard] = problems
    if to_hash:
        with ThreadPoolExecutor(max_workers=8) as pool:
            actual = list(pool.map(lambda t: _checksum_or_none(layout, t[1]), to_hash))
        for (shard, rel, want), got in zip(to_hash, actual):
            if got is None:
                damaged.setdefault(shard, []).append(f"{rel}: missing")
            elif got != want:
                damaged.setdefault(shard, []).append(f"{rel}: {CHECKSUM} differs from the marker's")
    return {s: sorted(p) for s, p in sorted(damaged.items())}, unverifiable


def _checksum_or_none(layout: OutputLayout, rel: str) -> str | None:
    try:
        return file_checksum(layout, rel)
    except FileNotFoundError:
        return None


def damaged_shards(layout: OutputLayout, markers: dict[int, dict[str, Any]], checksums: bool = True) -> list[int]:
    """Committed shards with a missing, resized or (with ``checksums``) altered file."""
    return sorted(verify_markers(layout, markers, checksums)[0])
