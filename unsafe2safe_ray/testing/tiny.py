"""Tiny random-weight models built from config, for tests and the ``tiny`` profile.

Models live under ``tiny_root()`` (``$U2S_TINY_DIR`` or ``~/.cache/unsafe2safe_ray/tiny``) and are
built on first use; nothing is downloaded. Profiles refer to them as ``tiny://<name>``.
"""

from __future__ import annotations

import os
from pathlib import Path


def tiny_root() -> Path:
    return Path(os.environ.get("U2S_TINY_DIR", Path.home() / ".cache" / "unsafe2safe_ray" / "tiny"))


def resolve_model_source(source: str) -> str:
    """``tiny://name`` -> a local directory (built if missing); anything else unchanged."""
    if not source.startswith("tiny://"):
        return source
    name = source[len("tiny://"):]
    path = tiny_root() / name
    if not (path / ".complete").exists():
        build_tiny_model(name, path)
    return str(path)


def build_tiny_model(name: str, path: Path) -> None:
    """Build one tiny model by name into ``path`` and mark it complete."""
    from unsafe2safe_ray.testing import builders

    builder = builders.BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"unknown tiny model {name!r}; known: {sorted(builders.BUILDERS)}")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    builder(tmp)
    (tmp / ".complete").write_text("ok\n")
    if path.exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
