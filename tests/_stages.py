"""Test-only stages: they exercise the job's semantics without models. Not part of the package:
``tests/conftest.py`` registers them (``$U2S_EXTRA_STAGES``, read by ``unsafe2safe_ray.stages``)
and puts ``tests/`` on ``PYTHONPATH`` so that Ray workers and CLI subprocesses import this module.
The ``U2S_TEST_*`` variables below steer them; nothing in the package reads them."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.stages.base import Resources, Stage


class FlagAllStage(Stage):
    """Flags every image; with ``$U2S_TEST_EDIT=invert`` it edits (inverts) them, with
    ``$U2S_TEST_EDIT=fail`` editing raises for keys listed in ``$U2S_TEST_FAIL_KEYS`` (or all)."""

    name = "testing.flag_all"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # Read on the driver; the stage object travels to the workers with these values.
        self.mode = os.environ.get("U2S_TEST_EDIT", "none")
        self.fail_keys = set(filter(None, os.environ.get("U2S_TEST_FAIL_KEYS", "").split(",")))
        self.delay = float(os.environ.get("U2S_TEST_DELAY", "0"))

    def resources(self) -> Resources:
        return Resources(num_cpus=0.5, batch_size=4)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        mode, fail_keys, delay = self.mode, self.fail_keys, self.delay
        for row in rows:
            time.sleep(delay)
            row["privacy_flag"] = True
            row["categories"] = ["people"]
            row["private_caption"] = f"secret caption of {row['key']}"
            if mode == "invert" or (mode == "fail" and fail_keys and row["key"] not in fail_keys):
                records.set_image(row, 255 - np.array(records.get_image(row)))
                row["status"] = records.EDITED
                row["editor"] = "testing.invert"
            elif mode == "fail":
                records.fail(row, "testing: edit failed on purpose")
        return rows
