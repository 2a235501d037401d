"""The layer contract of ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported):
a lower layer never imports a higher one, only the Ray adapter calls ``map_batches``, and the
package never imports test code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unsafe2safe_ray"
TESTS = Path(__file__).resolve().parent

# The bottom layer: the row contract, the config, planning and storage.
LOWER = ("records.py", "config.py", "plan", "storage")
FORBIDDEN_IN_LOWER = ("torch", "torchvision", "vllm", "diffusers", "transformers", "ray",
                      "unsafe2safe_ray.stages", "unsafe2safe_ray.engines", "unsafe2safe_ray.editors",
                      "unsafe2safe_ray.detectors", "unsafe2safe_ray.eval", "unsafe2safe_ray.train",
                      "unsafe2safe_ray.models", "unsafe2safe_ray.tiny_models", "unsafe2safe_ray.job",
                      "unsafe2safe_ray.preflight", "unsafe2safe_ray.output", "unsafe2safe_ray.cli")
# The only upward imports of the bottom layer (exact module names): config.py takes one constant
# from detectors.identity (the same-identity distance) and reads the stage-name registry
# (stages/__init__.py, a dict of strings that imports nothing) to validate ``stages``.
ALLOWED_IN_LOWER = {"config.py": {"unsafe2safe_ray.detectors.identity", "unsafe2safe_ray.stages"}}
# ``map_batches`` and ``flat_map`` are called by the Ray adapter (stages/base.py) only; other
# modules call the adapter's functions (``stages.base.map_batches`` / ``flat_map``).
MAP_BATCHES_EXCEPTIONS = {"stages/base.py"}
ADAPTER_NAMES = {"ray_adapter", "base"}


def _sources(*parts: str) -> list[Path]:
    files: list[Path] = []
    for part in parts or (".",):
        path = PACKAGE / part
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return files


def _imports(path: Path, root: Path = PACKAGE.parent) -> list[tuple[int, str]]:
    """Every imported module name (top level and inside functions), absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(root).with_suffix("").parts[:-node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from unsafe2safe_ray import stages` imports the submodule.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names
                      if module == "unsafe2safe_ray"]
    return found


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@pytest.mark.parametrize("path", _sources(*LOWER), ids=_rel)
def test_lower_layers_import_no_higher_layer(path):
    allowed = ALLOWED_IN_LOWER.get(_rel(path), set())
    bad = [f"{_rel(path)}:{line} imports {module}" for line, module in _imports(path)
           if module not in allowed and any(_under(module, f) for f in FORBIDDEN_IN_LOWER)]
    assert not bad, "\n".join(bad)


def test_only_the_ray_adapter_calls_map_batches():
    bad = []
    for path in _sources():
        if _rel(path) in MAP_BATCHES_EXCEPTIONS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("map_batches", "flat_map")
                    and not (isinstance(node.func.value, ast.Name) and node.func.value.id in ADAPTER_NAMES)):
                bad.append(f"{_rel(path)}:{node.lineno} calls .{node.func.attr} (use stages.base.{node.func.attr})")
    assert not bad, "\n".join(bad)


def test_the_package_imports_no_test_code():
    test_modules = {p.stem for p in TESTS.rglob("*.py")} | {"tests", "conftest", "pytest", "moto"}
    bad = []
    for path in _sources():
        for line, module in _imports(path):
            if module.split(".")[0] in test_modules or _under(module, "unsafe2safe_ray.testing"):
                bad.append(f"{_rel(path)}:{line} imports {module}")
        if "U2S_TEST_" in path.read_text():
            bad.append(f"{_rel(path)} reads a U2S_TEST_* switch (test stages live in tests/)")
    assert not bad, "\n".join(bad)
    assert not (PACKAGE / "testing").exists()


def test_the_checker_sees_a_violation(tmp_path):
    """The contract can fail: a storage module importing torch and (relatively) a stage inside a
    function is caught."""
    probe = tmp_path / "unsafe2safe_ray" / "storage" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    import torch\n    from ..stages import base\n")
    modules = [m for _, m in _imports(probe, root=tmp_path)]
    assert modules == ["torch", "unsafe2safe_ray.stages"]
    assert all(any(_under(m, f) for f in FORBIDDEN_IN_LOWER) for m in modules)
