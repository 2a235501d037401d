"""List the input: a prefix of image files (labels from parent folders) or a manifest file.

Inputs are confined: a prefix listing never follows a symlink out of the input folder and takes
only regular files; a manifest may name only files under its own folder, unless other prefixes
are allowed explicitly (``io.allow_input_prefixes`` / ``--allow-input-prefix``). Anything else
(absolute paths, ``file://`` or ``..`` out of the folder, other hosts or buckets, URIs carrying
credentials) is refused at planning time with a message naming the rows. The same file under
several spellings is one sample (duplicates are found on the canonical URI and counted). Files
the listing skips are counted by reason and logged, never dropped silently.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from unsafe2safe_ray.storage.fs import StorageError, filesystem, is_local
from unsafe2safe_ray.storage.redact import redact_text, redact_uri

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".avif", ".heic", ".heif")
MANIFEST_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".ndjson")
_WEB = ("http", "https")
_MAX_NAMED = 5


class InputError(ValueError):
    """The input cannot be listed; the message says what to fix."""


@dataclass(frozen=True)
class InputListing:
    """Sorted source URIs with their labels (None when the dataset has none).

    ``skipped`` counts files the listing did not take, by reason (``"extension .txt"``,
    ``"not a regular file"``, ``"symlink out of the input"``, ...); ``duplicates`` counts
    entries dropped because their canonical URI was already listed.
    """

    kind: str  # "prefix" | "manifest"
    uris: list[str]
    labels: list[str | None]
    skipped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0


def list_input(uri: str, storage_options: dict[str, Any] | None = None,
               allow_prefixes: Iterable[str] = ()) -> InputListing:
    """List ``uri``: a manifest file by extension, otherwise a prefix listed recursively.

    ``allow_prefixes``: prefixes (URIs or local paths) a manifest may name besides its own folder.
    """
    if "@" in urlsplit(uri).netloc:
        raise InputError(f"input {redact_uri(uri)!r} carries credentials in its URI; pass them through "
                         "the environment (AWS_ACCESS_KEY_ID, ...), a profile or io.storage_options instead")
    fs, path = filesystem(uri, storage_options)
    try:
        is_file = fs.isfile(path)
        exists = is_file or fs.exists(path)
    except Exception as e:  # noqa: BLE001 - credentials, DNS, connection refused
        raise StorageError(f"cannot reach input {redact_uri(uri)!r}: {type(e).__name__}: {redact_text(str(e))}") from None
    if not exists:
        raise InputError(f"input {uri!r} does not exist")
    if is_file and path.lower().endswith(MANIFEST_EXTENSIONS):
        listing = _read_manifest(fs, path, uri, list(allow_prefixes))
    elif is_file:
        raise InputError(f"input {uri!r} is a file but not a manifest ({', '.join(MANIFEST_EXTENSIONS)})")
    else:
        listing = _list_prefix(fs, path, uri)
    if listing.skipped:
        log.warning("input %s: skipped %d file(s): %s", redact_uri(uri), sum(listing.skipped.values()),
                    ", ".join(f"{reason} x{n}" for reason, n in sorted(listing.skipped.items())))
    if listing.duplicates:
        log.warning("input %s: %d duplicate entr%s (the same file under another spelling) dropped",
                    redact_uri(uri), listing.duplicates, "y" if listing.duplicates == 1 else "ies")
    return listing


def _full_uri(fs, path: str) -> str:
    return fs.unstrip_protocol(path)


def _extension(name: str) -> str:
    ext = posixpath.splitext(name)[1].lower()
    return ext or "(none)"


# --- prefix listings ------------------------------------------------------------------------

def _list_prefix(fs, path: str, uri: str) -> InputListing:
    skipped: Counter[str] = Counter()
    if is_local(fs):
        candidates = _walk_local(path, skipped)
    else:
        candidates = []
        for p, info in sorted(fs.find(path, detail=True).items()):
            if not p.lower().endswith(IMAGE_EXTENSIONS):
                skipped[f"extension {_extension(p)}"] += 1
            elif info.get("type", "file") != "file":
                skipped["not a regular file"] += 1
            else:
                candidates.append((p, p))
    # One entry per canonical file: the file's own path where it is listed, else the first alias.
    chosen: dict[str, str] = {}
    for p, canonical in sorted(candidates):
        if canonical not in chosen or p == canonical:
            chosen[canonical] = p
    files = sorted(chosen.values())
    duplicates = len(candidates) - len(files)
    if not files:
        raise InputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {uri!r}"
                         + (f" (skipped: {dict(skipped)})" if skipped else ""))
    root = path.rstrip("/")
    labels: list[str | None] = []
    for f in files:
        parent = posixpath.dirname(f).rstrip("/")
        # Images directly under the prefix have no class folder.
        labels.append(posixpath.basename(parent) if parent != root else None)
    return InputListing("prefix", [_full_uri(fs, f) for f in files], labels, dict(skipped), duplicates)


def _walk_local(root: str, skipped: Counter) -> list[tuple[str, str]]:
    """(path, canonical path) of the regular image files under ``root``; symlinks are taken only
    when they resolve inside ``root``, symlinked folders are not followed."""
    root = root.rstrip("/") or "/"
    real_root = os.path.realpath(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                skipped["symlinked folder (not followed)"] += 1
        for name in filenames:
            full = posixpath.join(dirpath, name)
            if not name.lower().endswith(IMAGE_EXTENSIONS):
                skipped[f"extension {_extension(name)}"] += 1
                continue
            real = os.path.realpath(full)
            if not _under(real, real_root):
                skipped["symlink out of the input"] += 1
                continue
            try:
                mode = os.stat(real).st_mode
            except OSError:
                skipped["broken symlink"] += 1
                continue
            if not stat.S_ISREG(mode):
                skipped["not a regular file"] += 1
                continue
            out.append((full, real))
    return out


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


# --- manifests ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Location:
    """Where a manifest row points: the URI to read, the canonical form compared with the
    allowed prefixes and used to find duplicates, and whether it is a local file."""

    read_uri: str
    canonical: str
    local_path: str | None


class _Refused(ValueError):
    pass


def _locate(u: str, fs, base: str) -> _Location:
    """Resolve one manifest entry against the manifest's folder ``base`` (on ``fs``)."""
    if "://" not in u:
        if u.startswith("/") or is_local(fs):
            path = u if u.startswith("/") else posixpath.join(base, u)
            if not is_local(fs) and u.startswith("/"):
                raise _Refused("an absolute local path in a manifest that is not local")
            return _local(path)
        return _remote(_full_uri(fs, posixpath.join(base, u)))
    parts = urlsplit(u)
    if "@" in parts.netloc:
        raise _Refused("carries credentials in the URI (user:password@); pass them through the environment or "
                       "io.storage_options instead")
    scheme = parts.scheme.lower()
    if scheme in ("file", "local"):
        rest = u.split("://", 1)[1]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if not rest.startswith("/"):
            raise _Refused("a file:// URI that is not absolute")
        return _local(rest)
    return _remote(u)


def _local(path: str) -> _Location:
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    real = os.path.realpath(norm)
    return _Location("file://" + norm, "file://" + real, real)


def _remote(u: str) -> _Location:
    parts = urlsplit(u)
    scheme = parts.scheme.lower()
    if scheme in _WEB:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        path = posixpath.normpath(parts.path or "/")
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        read = urlunsplit((scheme, netloc, path, parts.query, ""))
        return _Location(read, urlunsplit((scheme, netloc, path, parts.query, "")), None)
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ValueError, ImportError) as e:
        raise _Refused(f"an unknown or unavailable protocol {scheme!r} ({e})") from None
    protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    stripped = cls._strip_protocol(u)
    norm = posixpath.normpath(stripped) if stripped else stripped
    if norm.startswith("..") or norm.startswith("/.."):
        raise _Refused("a path that climbs out of its bucket with '..'")
    full = f"{protocol}://{norm.lstrip('/')}"
    return _Location(full, full, None)


def _prefix_canonical(prefix: str, fs, base: str) -> str:
    loc = _locate(prefix, fs, base) if "://" in prefix or prefix.startswith("/") else _local(os.path.abspath(prefix))
    return loc.canonical.rstrip("/")


def _read_manifest(fs, path: str, uri: str, allow_prefixes: list[str]) -> InputListing:
    with fs.open(path, "rb") as f:
        data = f.read()
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(io.BytesIO(data))
        else:
            table = pajson.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"manifest {uri!r} cannot be parsed: {e}") from None
    if "uri" not in table.column_names:
        raise InputError(f"manifest {uri!r} has no 'uri' column (columns: {table.column_names})")
    raw = [None if u is None else str(u) for u in table.column("uri").to_pylist()]
    empty = [i + 1 for i, u in enumerate(raw) if not u or u == "None"]
    if empty:
        raise InputError(f"manifest {uri!r} has empty uri values (row {empty[0]})")
    if "label" in table.column_names:
        labels = [None if v is None else str(v) for v in table.column("label").to_pylist()]
    else:
        labels = [None] * len(raw)

    # Relative URIs are relative to the manifest's folder; only files under it (or under an
    # allowed prefix) may be read.
    base = posixpath.dirname(path)
    home = _local(base).canonical if is_local(fs) else _remote(_full_uri(fs, base)).canonical
    allowed = [home.rstrip("/")]
    for prefix in allow_prefixes:
        try:
            allowed.append(_prefix_canonical(prefix, fs, base))
        except _Refused as e:
            raise InputError(f"--allow-input-prefix {redact_uri(prefix)!r}: {e}") from None

    refused: list[str] = []
    not_regular: list[str] = []
    seen: set[str] = set()
    kept: list[tuple[str, str | None]] = []
    duplicates = 0
    for row, (u, label) in enumerate(zip(raw, labels), start=1):
        shown = redact_uri(u)
        try:
            loc = _locate(u, fs, base)
        except _Refused as e:
            refused.append(f"row {row}: {shown!r} {e}")
            continue
        check = loc.canonical.split("?", 1)[0] if loc.canonical.split("://", 1)[0] in _WEB else loc.canonical
        if not any(_under(check, a) for a in allowed):
            refused.append(f"row {row}: {shown!r} is outside {redact_uri(home)}/"
                           f"{' and the allowed prefixes' if len(allowed) > 1 else ''}")
            continue
        if loc.local_path is not None:
            try:
                mode = os.stat(loc.local_path).st_mode
            except OSError:
                mode = None  # missing: a failed row ("file not found") when it is read
            if mode is not None and not stat.S_ISREG(mode):
                not_regular.append(f"row {row}: {shown!r}")
                continue
        if loc.canonical in seen:
            duplicates += 1
            continue
        seen.add(loc.canonical)
        kept.append((loc.read_uri, label))
    if refused:
        raise InputError(
            f"manifest {redact_uri(uri)!r}: {len(refused)} row(s) name files outside its folder: "
            + "; ".join(refused[:_MAX_NAMED]) + ("; ..." if len(refused) > _MAX_NAMED else "")
            + ". List only files under the manifest's folder, or allow more with --allow-input-prefix PREFIX "
            "(config io.allow_input_prefixes)")
    if not_regular:
        raise InputError(f"manifest {redact_uri(uri)!r}: {len(not_regular)} row(s) are not regular files "
                         f"(a FIFO, device or folder): " + "; ".join(not_regular[:_MAX_NAMED]))
    kept.sort(key=lambda item: item[0])
    return InputListing("manifest", [u for u, _ in kept], [lb for _, lb in kept], {}, duplicates)
