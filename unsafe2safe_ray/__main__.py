"""``python -m unsafe2safe_ray``: the same CLI as ``unsafe2safe``."""

from unsafe2safe_ray.cli import main

main()
