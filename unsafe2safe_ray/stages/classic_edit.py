"""``classic_edit``: obscure the detected regions of flagged rows (blur, pixelate, fill, inpaint).

Flagged rows keep their original pixels in ``original_image`` for the verify stage and get the
edited pixels in ``image`` (status ``edited``, editor ``classic``). Unflagged rows are not
touched: their status stays ``pending`` and the writer turns them into ``passed``.
"""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.stages.base import Stage


class ClassicEditStage(Stage):
    """Applies ``editors.classic.obscure_regions`` with the per-category methods of the config."""

    name = "classic_edit"

    def setup(self) -> None:
        """Build the obscuring settings (no model to load); bound OpenCV's threads."""
        import cv2

        from unsafe2safe_ray.editors.classic import ObscureSettings

        cv2.setNumThreads(max(1, int(self.config.classic_edit.num_cpus)))
        self.settings = ObscureSettings.from_config(self.config.classic_edit)

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Edit flagged rows; pass the others through unchanged."""
        from unsafe2safe_ray.editors.classic import obscure_regions

        if not hasattr(self, "settings"):
            self.setup()
        for row in rows:
            if not row.get("privacy_flag"):
                continue
            regions = records.json_list(row.get("regions"))
            original = records.get_image(row)
            if original is None:
                records.fail(row, "classic_edit: flagged row has no pixels")
                continue
            if not regions:
                # Flagged without a box (a VLM flag, say): nothing to obscure, so nothing safe
                # to publish. Fail closed rather than pass the image on unedited.
                records.fail(row, "classic_edit: flagged but no regions to obscure")
                continue
            edited = obscure_regions(original, regions, settings=self.settings)
            records.set_image(row, original, "original_image")
            records.set_image(row, edited)
            row["status"] = records.EDITED
            row["editor"] = "classic"
        return rows
