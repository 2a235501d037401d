"""Model sources: the one place that turns a configured model into something a loader can open.

Every loader (the transformers engine, the vLLM stages, the three diffusers editors, CLIP in
``eval`` and ``train``, the MAE encoder, the judge) calls ``resolve_model_source``. A source is:

- a hub id (``org/name``), returned unchanged: the loader passes ``revision`` (``hub_kwargs``) to
  ``from_pretrained``, and the hub libraries honour ``HF_HUB_OFFLINE`` (nothing here goes online);
- a local folder (``/path``, ``./path``, ``~/path``, ``file://path``), returned as a path;
- an fsspec prefix (``s3://``, ``gs://``, ...), copied once per node into
  ``$U2S_MODEL_CACHE`` (default ``~/.cache/unsafe2safe_ray/models``) under a key made of the URI
  and a digest of its listing (names, sizes, ETags), so a changed prefix is copied again. A lock
  file makes concurrent actors on one node copy it once; the others wait and reuse the copy.
  ``keep_remote=True`` returns ``s3://`` / ``gs://`` unchanged for ``ray.data.llm``, which
  downloads the model on each node itself;
- ``tiny://<name>``: a tiny random-weight model (``unsafe2safe_ray.tiny_models``), built once
  per node under the same kind of lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TINY = "tiny://"
# Remote schemes that ray.data.llm downloads per node by itself (keep_remote=True).
RAY_LLM_REMOTE = ("s3://", "gs://")


def source_kind(source: str) -> str:
    """``tiny``, ``local``, ``remote`` or ``hub``."""
    if source.startswith(TINY):
        return "tiny"
    if source.startswith("file://"):
        return "local"
    if "://" in source:
        return "remote"
    if source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().is_dir():
        return "local"
    return "hub"


def model_cache_root() -> Path:
    return Path(os.environ.get("U2S_MODEL_CACHE", Path.home() / ".cache" / "unsafe2safe_ray" / "models"))


def hub_kwargs(source: str, revision: str | None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``source``: the revision, for hub ids only."""
    return {"revision": revision} if revision and source_kind(source) == "hub" else {}


def resolve_model_source(source: str, *, revision: str | None = None, storage_options: dict | None = None,
                         keep_remote: bool = False) -> str:
    """What a loader opens for ``source``: a local folder, or a hub id (load it with
    ``hub_kwargs(source, revision)``). See the module docstring for the kinds of source."""
    kind = source_kind(source)
    if kind == "hub":
        return source
    if kind == "local":
        return str(Path(source.removeprefix("file://")).expanduser())
    if kind == "tiny":
        return _tiny(source[len(TINY):])
    if keep_remote and source.startswith(RAY_LLM_REMOTE):
        return source
    return _remote(source, storage_options or {})


def _tiny(name: str) -> str:
    from unsafe2safe_ray.tiny_models import BUILDERS, build_tiny_model, tiny_root

    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(BUILDERS)}")
    target = tiny_root() / name
    _materialize(target, lambda tmp: build_tiny_model(name, tmp), marker=f"{TINY}{name}")
    return str(target)


def _remote(uri: str, storage_options: dict) -> str:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    root = root.rstrip("/")
    files = {}
    for path, info in sorted(fs.find(root, detail=True).items()):
        if info.get("type", "file") != "file":
            continue
        rel = path[len(root):].lstrip("/") if path.startswith(root) else Path(path).name
        tag = next((info[k] for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified") if info.get(k)), "")
        files[rel] = (path, info.get("size"), str(tag))
    if not files:
        raise FileNotFoundError(f"model source {uri} lists no files")
    digest = hashlib.sha256(json.dumps({k: v[1:] for k, v in files.items()}, sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(f"{uri}\n{digest}".encode()).hexdigest()[:16]
    target = model_cache_root() / f"{Path(root).name or 'model'}-{key}"
    _materialize(target, lambda tmp: _copy_tree(fs, {rel: v[0] for rel, v in files.items()}, tmp), marker=uri)
    return str(target)


def _copy_tree(fs: Any, files: dict[str, str], dest: Path) -> None:
    """Copy ``files`` (relative name -> remote path) into ``dest``."""
    log.info("copying model (%d files) into %s", len(files), dest)
    for rel, remote in files.items():
        local = dest / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(local))


def _materialize(target: Path, fill: Callable[[Path], None], marker: str) -> None:
    """Make ``target`` once: under ``target.lock`` (one process per node fills it, the others
    wait), fill a temporary sibling, write ``.complete`` and rename it into place."""
    if (target / ".complete").exists():
        return
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (target / ".complete").exists():
                return
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                fill(tmp)
                (tmp / ".complete").write_text(marker + "\n")
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
