"""Stage registry: profile stage names -> ``module:Class`` (imported lazily, so listing stages
never imports torch).

More stages plug in without touching this file: ``register_stage(name, "module:Class")`` in the
process that builds the config, or ``$U2S_EXTRA_STAGES`` (``name=module:Class,...``, read when this
module is first imported) for CLI runs. The module must be importable on every Ray worker too
(installed, or on ``PYTHONPATH`` before Ray starts). The test suite registers its model-free
``testing.flag_all`` stage (``tests/_stages.py``) this way.
"""

from __future__ import annotations

import importlib
import os

EXTRA_STAGES_ENV = "U2S_EXTRA_STAGES"

STAGES: dict[str, str] = {
    "detect": "unsafe2safe_ray.stages.detect:DetectStage",
    "caption": "unsafe2safe_ray.stages.caption:CaptionStage",
    "instruct": "unsafe2safe_ray.stages.instruct:InstructStage",
    "edit": "unsafe2safe_ray.stages.edit:EditStage",
}


def register_stage(name: str, target: str) -> None:
    """Make ``name`` usable in ``stages=[...]``: ``target`` is ``"module:Class"`` (a ``Stage``)."""
    module, sep, cls = target.partition(":")
    if not (name and module and sep and cls):
        raise ValueError(f"stage {name!r}: expected 'module:Class', got {target!r}")
    STAGES[name] = target


def _register_from_env() -> None:
    for item in filter(None, (s.strip() for s in os.environ.get(EXTRA_STAGES_ENV, "").split(","))):
        name, _, target = item.partition("=")
        register_stage(name.strip(), target.strip())


_register_from_env()


def load_stage_class(name: str):
    """The Stage class registered under ``name``."""
    module, _, cls = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
