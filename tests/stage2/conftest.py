"""Stage 2 fixtures: pipeline rows built in memory, stage factories, scripted verifiers."""

from __future__ import annotations

import numpy as np
import pytest

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.detectors.verifier import Leak, VerifyReport


def make_image(key: str, height: int, width: int) -> np.ndarray:
    """A deterministic textured image (gradients plus key-seeded noise)."""
    rng = np.random.default_rng(sum(map(ord, key)))
    y = np.linspace(0, 200, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 200, width, dtype=np.float32)[None, :]
    base = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                     np.full((height, width), 90, np.float32)], axis=2)
    return np.clip(base + rng.integers(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def make_row(key: str, height: int = 64, width: int = 96, *, flag: bool = True,
             regions: list[dict] | None = None, image: np.ndarray | None = None) -> dict:
    """A pending pipeline row with pixels, Stage 1 texts and the seed derived from its key."""
    row = records.new_row(key, 0, f"mem://{key}.png", None, records.derive_seed(42, key))
    records.set_image(row, make_image(key, height, width) if image is None else image)
    row["privacy_flag"] = flag
    row["regions"] = list(regions or [])
    row["private_caption"] = "a man with a red jacket standing in the street"
    row["public_caption"] = "a person standing in the street"
    row["combined_caption"] = "a young woman with long curly hair and a blue shirt in the street"
    row["edit_instruction"] = "change the hair color and the clothing"
    return row


def copy_rows(rows: list[dict]) -> list[dict]:
    return [dict(r) for r in rows]


def edit_config(*overrides: str, profile: str = "none"):
    """A JobConfig whose edit section runs the fake editor without verification by default."""
    return load_config(profile, overrides=["edit.editor=fake", "edit.verify=false", "verify.required_checks=[]",
                                           *overrides])


def edit_stage(*overrides: str, profile: str = "none"):
    from unsafe2safe_ray.stages.edit import EditStage

    stage = EditStage(edit_config(*overrides, profile=profile))
    stage.setup()
    return stage


class ScriptedVerifier:
    """Leaks for the first ``leaky_checks`` checks of each original, then passes; with
    ``until_filled`` it instead leaks until the box is one flat colour (a classic fill)."""

    def __init__(self, leaky_checks: int = 0, bbox=(4, 4, 20, 20), until_filled: bool = False):
        self.leaky_checks = leaky_checks
        self.bbox = list(bbox)
        self.until_filled = until_filled
        self.seen: dict[bytes, int] = {}

    def check(self, original, edited, regions):
        key = original.tobytes()
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.until_filled:
            x0, y0, x1, y1 = self.bbox
            leaking = len(np.unique(edited[y0:y1, x0:x1].reshape(-1, 3), axis=0)) > 1
        else:
            leaking = self.seen[key] <= self.leaky_checks
        leaks = [Leak("people", self.bbox, "face_identity", {"distance": 0.3})] if leaking else []
        return VerifyReport(leaks=leaks, checks={"faces_checked": 1, "min_face_distance": 0.3 if leaking else 0.9},
                            checks_run=["faces", "text"], required=["faces", "text"])


@pytest.fixture()
def rows_factory():
    return make_row
