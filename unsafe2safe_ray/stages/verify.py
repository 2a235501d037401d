"""``verify``: re-detect on the edited output; leaks escalate to a stronger method, then fail.

Works on any row that carries ``original_image`` (written by ``classic_edit`` or by the
diffusion ``edit`` stage) and relies on row columns only. For each such row:

1. ``PrivacyVerifier.check(original, edited, regions)``: faces still matching their original
   identity, text still readable.
2. Each leaking region (and, for faces, the output box that matched) is obscured again with the
   escalation method (fill by default) and the row is checked again, up to ``max_escalations``.
3. A row that still leaks becomes a failed row (never a leaked sample).

The results go to ``verification`` (JSON: numbers and boxes only, never text), and
``original_image`` is cleared so the original pixels go no further than this stage. (The
writer drops recognized strings from the published ``regions``; the private table keeps them.)
"""

from __future__ import annotations

import json
from typing import Any

from unsafe2safe_ray import records
from unsafe2safe_ray.stages.base import Stage


class VerifyStage(Stage):
    """Checks every edited row against its original; escalates or fails leaking rows."""

    name = "verify"

    def setup(self) -> None:
        """Load the verifier's models once per actor."""
        import cv2

        from unsafe2safe_ray.detectors.faces import threads_for
        from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

        cv2.setNumThreads(threads_for(self.config.verify))
        self.verifier = PrivacyVerifier(self.config.verify)
        self.verifier.warm_up()

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Verify rows that carry an original; leave the others as they are."""
        if not hasattr(self, "verifier"):
            self.setup()
        for row in rows:
            if row.get("original_image") is not None:
                self._verify_row(row)
                row["original_image"] = None
            elif row.get("status") == records.EDITED:
                # An edit we cannot compare with its original cannot be vouched for.
                records.fail(row, "verify: edited row has no original_image to verify against")
        return rows

    def _verify_row(self, row: dict[str, Any]) -> None:
        from unsafe2safe_ray.editors.classic import obscure_regions

        cfg = self.config.verify
        original = records.get_image(row, "original_image")
        edited = records.get_image(row)
        regions = records.json_list(row.get("regions"))

        # 1. First check of the editor's output.
        report = self.verifier.check(original, edited, regions)
        first = report

        # 2. Escalate leaking regions until clean or out of rounds.
        rounds = 0
        while not report.ok and rounds < cfg.max_escalations:
            rounds += 1
            edited = obscure_regions(edited, _leak_regions(report), cfg.escalation_method, cfg.escalation_dilation)
            report = self.verifier.check(original, edited, regions)

        verification = {
            "ok": report.ok,
            "escalations": rounds,
            "escalation_method": cfg.escalation_method if rounds else None,
            "checks": report.checks,
            "first_checks": first.checks if rounds else None,
            "first_leaks": [_leak_summary(l) for l in first.leaks],
            "leaks": [_leak_summary(l) for l in report.leaks],
        }
        # Merge: the edit stage's own verification record (under "edit") stays.
        row["verification"] = json.dumps({**records.json_dict(row.get("verification")), **verification})

        # 3. Still leaking: a failed row, never a leaked sample.
        if not report.ok:
            kinds = sorted({leak.kind for leak in report.leaks})
            records.fail(row, f"verify: {len(report.leaks)} leak(s) remain after {rounds} escalation(s): "
                              + ", ".join(kinds))
            return
        if rounds:
            records.set_image(row, edited)
            row["editor"] = f"{row.get('editor') or 'unknown'}+{cfg.escalation_method}"


def _leak_regions(report) -> list[dict]:
    """The regions to obscure again: each leak's box, plus the output box a face matched."""
    regions = []
    for leak in report.leaks:
        regions.append({"category": leak.category, "bbox": leak.bbox})
        matched = leak.detail.get("matched_bbox")
        if matched and matched != leak.bbox:
            regions.append({"category": leak.category, "bbox": matched})
    return regions


def _leak_summary(leak) -> dict:
    return {"category": leak.category, "bbox": leak.bbox, "kind": leak.kind, "detail": leak.detail}

