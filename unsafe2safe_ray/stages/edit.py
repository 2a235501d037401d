"""Stage 2: the generative (or classic) editor, with size buckets, region scope, verification
and fail-closed handling.

Per Ray batch (one actor holds one editor, loaded once in ``setup``):

1. Select the rows to edit: live, not yet edited, flagged (or every row with ``edit.edit_all``).
2. Bucket them by working size (native or area buckets, see ``editors.base.working_size``) so
   one editor call shares one resolution; each image keeps its own seed (the row's ``seed``).
3. Edit each bucket. A bucket that raises (OOM, NaN output, anything) is retried image by image
   at ``edit.fallback_scale`` of the size; an image that fails again becomes a failed row.
4. Resize outputs back to the original size; with ``scope: regions`` blend them into the
   original only inside the dilated, feathered union of the row's regions.
5. Verify every edited image with the privacy verifier. A leak is re-edited with a new seed at a
   higher strength (``edit.retries`` times), then the leaking regions get the verify section's
   classic method; an image that still leaks becomes a failed row.
6. Edited rows keep their original pixels in ``original_image`` for the later verify stage,
   carry the edit in ``image``, and get ``status=edited``, ``editor`` and ``verification``.

A flagged row never leaves this stage with its original pixels in ``image`` and ``status`` other
than pending or failed, so the writer's fail-closed rule keeps them out of the output.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.editors.base import (
    EditRequest,
    blend,
    region_mask,
    resize_image,
    working_size,
)
from unsafe2safe_ray.stages.base import Stage

log = logging.getLogger(__name__)


@dataclass
class _EditJob:
    """One row's way through the stage: its inputs, the current edit and what happened."""

    row: dict[str, Any]
    original: np.ndarray
    regions: list[dict]
    source_prompt: str
    target_prompt: str
    instruction: str
    seed: int
    edited: np.ndarray | None = None
    error: str | None = None
    report: Any = None
    attempts: list[dict] = field(default_factory=list)
    scope: str = "global"
    fallback: str | None = None


class EditStage(Stage):
    """Stage 2 editing in an actor pool (see the module docstring for the steps)."""

    name = "edit"

    def setup(self) -> None:
        """Load the editor once per actor, and the privacy verifier when ``edit.verify``."""
        from unsafe2safe_ray.editors import load_editor

        self.editor = load_editor(self.config.edit.editor, self.config)
        self.verifier = self._load_verifier() if self.config.edit.verify else None

    def _load_verifier(self):
        # Fail closed: with verification on, a missing verifier stops the actor instead of
        # letting unverified edits through.
        from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

        verifier = PrivacyVerifier(self.config.verify)
        verifier.warm_up()
        return verifier

    # -- 1. selection ---------------------------------------------------------------------------

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Edit the selected rows in place; other rows pass through untouched."""
        jobs = [self._job(row) for row in rows if self._selected(row)]
        if jobs:
            self._edit_round(jobs, strength=0)
            self._verify_and_escalate(jobs)
            for job in jobs:
                self._finish(job)
        return rows

    def _selected(self, row: dict[str, Any]) -> bool:
        if row.get("status") in (records.FAILED, records.EDITED) or row.get("image") is None:
            return False
        return bool(row.get("privacy_flag")) or self.config.edit.edit_all

    @staticmethod
    def _job(row: dict[str, Any]) -> _EditJob:
        public = row.get("public_caption") or ""
        target = row.get("combined_caption") or public
        return _EditJob(
            row=row,
            original=records.get_image(row),
            regions=[r for r in records.json_list(row.get("regions")) if isinstance(r, dict)],
            source_prompt=row.get("private_caption") or public,
            target_prompt=target,
            instruction=row.get("edit_instruction") or target,
            seed=int(row.get("seed") or 0),
        )

    # -- 2-4. bucketed editing ------------------------------------------------------------------

    def _edit_round(self, jobs: list[_EditJob], strength: int) -> None:
        """Edit ``jobs`` at ``strength`` in same-size buckets. On success a job's ``edited``
        is replaced; on failure ``edited`` is kept (None in the first round) and the attempt
        records the error."""
        buckets: dict[tuple[int, int], list[_EditJob]] = {}
        for job in jobs:
            buckets.setdefault(self._size(job, scale=1.0), []).append(job)
        batch_size = self.config.edit.batch_size
        for size, bucket in buckets.items():
            for start in range(0, len(bucket), batch_size):
                self._edit_bucket(bucket[start:start + batch_size], size, strength)

    def _edit_bucket(self, jobs: list[_EditJob], size: tuple[int, int], strength: int) -> None:
        try:
            outputs = self.editor.edit([self._request(job, size, strength) for job in jobs])
        except Exception as batch_error:  # noqa: BLE001 - OOM, NaN, anything: retried alone below
            log.warning("edit: %s on a %dx%d bucket of %d; retrying each image alone at %.2fx",
                        type(batch_error).__name__, size[0], size[1], len(jobs),
                        self.config.edit.fallback_scale)
            _release_accelerator_memory()
            for job in jobs:
                self._edit_alone_smaller(job, strength, batch_error)
            return
        for job, out in zip(jobs, outputs):
            self._accept(job, out, strength, scale=1.0)

    def _edit_alone_smaller(self, job: _EditJob, strength: int, first_error: Exception) -> None:
        scale = self.config.edit.fallback_scale
        size = self._size(job, scale=scale)
        try:
            (out,) = self.editor.edit([self._request(job, size, strength)])
        except Exception as error:  # noqa: BLE001 - becomes this row's failure
            _release_accelerator_memory()
            message = (f"edit: {type(first_error).__name__} in batch, then {type(error).__name__} "
                       f"alone at {size[0]}x{size[1]}: {error}")
            job.attempts.append({"strength": strength, "seed": self._seed(job, strength), "scale": scale,
                                 "error": message})
            if job.edited is None:
                job.error = message
            return
        self._accept(job, out, strength, scale=scale)

    def _accept(self, job: _EditJob, out: np.ndarray, strength: int, scale: float) -> None:
        """Back to the original size, region blend, and keep it as the job's current edit."""
        height, width = job.original.shape[:2]
        out = resize_image(np.asarray(out, dtype=np.uint8), (height, width))
        edit = self.config.edit
        if edit.scope == "regions" and job.regions:
            mask = region_mask((height, width), job.regions, edit.dilation, edit.feather)
            out = blend(job.original, out, mask)
            job.scope = "regions"
        else:
            # A flagged image without regions is still edited whole: nothing may pass unedited.
            job.scope = "global" if edit.scope == "global" else "global-no-regions"
        job.edited = out
        job.attempts.append({"strength": strength, "seed": self._seed(job, strength), "scale": scale})

    def _size(self, job: _EditJob, scale: float) -> tuple[int, int]:
        height, width = job.original.shape[:2]
        multiple = self.editor.size_multiple
        if multiple is None:
            return height, width  # the editor works at any size (classic)
        edit = self.config.edit
        if edit.resolution == "area":
            return working_size(height, width, multiple=max(multiple, edit.bucket_multiple),
                                max_side=edit.max_side, target_area=edit.bucket_area, scale=scale)
        return working_size(height, width, multiple=multiple, max_side=edit.max_side, scale=scale)

    def _request(self, job: _EditJob, size: tuple[int, int], strength: int) -> EditRequest:
        height, width = job.original.shape[:2]
        sy, sx = size[0] / height, size[1] / width
        regions = [dict(r, bbox=[r["bbox"][0] * sx, r["bbox"][1] * sy, r["bbox"][2] * sx, r["bbox"][3] * sy])
                   for r in job.regions if r.get("bbox") and len(r["bbox"]) == 4]
        return EditRequest(
            image=resize_image(job.original, size), source_prompt=job.source_prompt,
            target_prompt=job.target_prompt, instruction=job.instruction, regions=regions,
            seed=self._seed(job, strength), strength=strength,
        )

    @staticmethod
    def _seed(job: _EditJob, strength: int) -> int:
        # Retries get another seed derived from the row's, so reruns retry identically.
        return job.seed if strength == 0 else records.derive_seed(job.seed, f"edit-retry-{strength}")

    # -- 5. verification and escalation ---------------------------------------------------------

    def _verify_and_escalate(self, jobs: list[_EditJob]) -> None:
        if self.verifier is None:
            return
        pending = [job for job in jobs if job.error is None]
        self._check(pending)
        for strength in range(1, self.config.edit.retries + 1):
            leaking = [job for job in pending if not job.report.ok]
            if not leaking:
                break
            self._edit_round(leaking, strength=strength)
            self._check(leaking)
        leaking = [job for job in pending if not job.report.ok]
        if leaking and self.config.edit.classic_fallback:
            self._classic_fill(leaking)
            self._check(leaking)
        for job in pending:
            if not job.report.ok:
                kinds = sorted({f"{leak.category}/{leak.kind}" for leak in job.report.leaks})
                job.error = (f"edit: privacy leak remains after {self.config.edit.retries} retries"
                             f"{' and classic fill' if job.fallback else ''}: {', '.join(kinds)}")

    def _check(self, jobs: list[_EditJob]) -> None:
        for job in jobs:
            job.report = self.verifier.check(job.original, job.edited, job.regions)
            job.attempts[-1]["ok"] = bool(job.report.ok)
            job.attempts[-1]["leaks"] = [_leak_record(leak) for leak in job.report.leaks]

    def _classic_fill(self, jobs: list[_EditJob]) -> None:
        method, dilation = self.config.verify.escalation_method, self.config.verify.escalation_dilation
        for job in jobs:
            boxes, unlocated = [], False
            for leak in job.report.leaks:
                if not getattr(leak, "bbox", None):
                    unlocated = True
                    continue
                boxes.append({"category": leak.category, "bbox": list(leak.bbox)})
                # A face may match the original at another place of the edited image.
                matched = (getattr(leak, "detail", None) or {}).get("matched_bbox")
                if matched and list(matched) != list(leak.bbox):
                    boxes.append({"category": leak.category, "bbox": list(matched)})
            # A leak without a location falls back to every known region of the row.
            targets = boxes + job.regions if unlocated else boxes
            if not targets:
                continue
            job.edited = np.asarray(_obscure_regions(job.edited, targets, method, dilation), dtype=np.uint8)
            job.fallback = method
            job.attempts.append({"strength": None, "seed": None, "scale": 1.0, "classic": method})

    # -- 6. the row -----------------------------------------------------------------------------

    def _finish(self, job: _EditJob) -> None:
        row = job.row
        if job.error is not None:
            records.fail(row, job.error)
            return
        records.set_image(row, job.original, "original_image")
        records.set_image(row, job.edited)
        row["status"] = records.EDITED
        row["editor"] = self.editor.name
        verification = records.json_dict(row.get("verification"))
        verification["edit"] = {
            "verified": self.verifier is not None,
            "ok": bool(job.report.ok) if job.report is not None else None,
            "scope": job.scope,
            "fallback": job.fallback,
            "attempts": job.attempts,
            "checks": _public_checks(job.report.checks) if job.report is not None else {},
        }
        row["verification"] = json.dumps(verification, default=_json_default)


def _obscure_regions(image: np.ndarray, regions: list[dict], method: str, dilation: float) -> np.ndarray:
    """The classic editor's region obscuring (blur / pixelate / fill / inpaint)."""
    from unsafe2safe_ray.editors.classic import obscure_regions

    return obscure_regions(image, regions, method, dilation)


def _leak_record(leak: Any) -> dict[str, Any]:
    # The leak's free-text detail may quote recognized text; the verification column is
    # published, so only the category, kind and location are kept.
    bbox = getattr(leak, "bbox", None)
    return {"category": leak.category, "kind": leak.kind,
            "bbox": [round(float(v), 1) for v in bbox] if bbox else None}


def _public_checks(checks: Any) -> dict[str, Any]:
    # Numbers and flags only, for the same reason as _leak_record.
    if not isinstance(checks, dict):
        return {}
    return {str(k): v.item() if isinstance(v, np.generic) else v for k, v in checks.items()
            if isinstance(v, (bool, int, float, np.generic))}


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _release_accelerator_memory() -> None:
    """After an OOM, hand cached CUDA blocks back before retrying smaller (no torch import if
    the editor never loaded it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
