"""unsafe2safe-ray: privacy-safe copies of image datasets on Ray Data (Unsafe2Safe, CVPR 2026)."""

from __future__ import annotations

__version__ = "0.1.0"


def open_output(uri: str, storage_options: dict | None = None):
    """Open a job's output: committed samples only. See ``unsafe2safe_ray.output``."""
    from unsafe2safe_ray.output import open_output as _open

    return _open(uri, storage_options)


__all__ = ["open_output", "__version__"]
