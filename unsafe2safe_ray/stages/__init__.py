"""Stage registry: profile stage names -> ``module:Class`` (imported lazily, so listing stages
never imports torch)."""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "detect": "unsafe2safe_ray.stages.detect:DetectStage",
    "caption": "unsafe2safe_ray.stages.caption:CaptionStage",
    "instruct": "unsafe2safe_ray.stages.instruct:InstructStage",
    "edit": "unsafe2safe_ray.stages.edit:EditStage",
    # Test-only (no shipped profile uses it): exercises flagging / fail-closed without models.
    "testing.flag_all": "unsafe2safe_ray.testing.stages:FlagAllStage",
}


def load_stage_class(name: str):
    """The Stage class registered under ``name``."""
    module, _, cls = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), cls)
