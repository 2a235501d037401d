"""``edit``: the one edit capability of Stage 2, for every editor (classic obscuring, the
diffusion editors, the test fake), with one fail-closed rule and one check-and-escalate routine.

Per Ray batch (one actor holds one editor and one privacy verifier, loaded once in ``setup``):

1. Select the rows to edit: live, not yet edited, flagged (or every row with ``edit.edit_all``).
   Their regions are read with ``detectors.geometry``: boxes are clipped to the image; boxes
   entirely outside it or without area are dropped; an unreadable box fails the row. A region
   editor (classic) cannot change a flagged row without regions, so such a row fails with an
   error that says what to change; an unflagged row it cannot edit stays as it is.
2. Bucket the rest by working size (native or area buckets, see ``editors.base.working_size``) so
   one editor call shares one resolution; each image keeps its own seed (the row's ``seed``).
3. Edit each bucket. A bucket that raises (OOM, NaN output, anything) is retried image by image
   at ``edit.fallback_scale`` of the size; an image that fails again becomes a failed row.
4. Resize outputs back to the original size; with ``scope: regions`` blend them into the
   original only inside the dilated, feathered union of the row's regions. With ``scope: crops``
   steps 2-4 work on windows around the regions instead (``editors.crops``): windows of many
   images are bucketed and batched together, edited with region prompts, and pasted back inside
   the regions' feathered masks; a row without regions is edited whole.
5. Check every edit: each region (or, without regions, the whole image) must have changed, and
   the privacy verifier must find no surviving face or readable text. A problem is re-edited with
   a new seed at a higher strength (``edit.retries`` times), then the problem regions get the
   verify section's classic method; an image that still fails a check becomes a failed row.
6. Rows that pass get ``status=edited``, ``editor`` and ``verification`` (numbers and boxes only).

The original pixels are read-only evidence for the whole batch: every check compares against
them, never against an earlier edit. A flagged row leaves this stage ``edited`` only when its
pixels changed where they had to and verification passed; otherwise it is failed, and the
writer's own fail-closed rule keeps unedited flagged pixels out of the output either way.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.detectors.geometry import BoxError, clip_box
from unsafe2safe_ray.detectors.verifier import Leak, VerifyReport, leak_record, leak_summary, leak_targets
from unsafe2safe_ray.editors.base import EditRequest, blend, region_mask, resize_image, working_size
from unsafe2safe_ray.stages.base import Stage

log = logging.getLogger(__name__)

# A region whose original pixels span fewer grey levels than this holds nothing to hide (a flat
# patch), so an editor may leave it as it was.
_FLAT_RANGE = 3


@dataclass
class _EditJob:
    """One row's way through the stage: its inputs, the current edit and what happened."""

    row: dict[str, Any]
    original: np.ndarray  # read-only: the evidence every check compares against
    regions: list[dict]
    source_prompt: str
    target_prompt: str
    instruction: str
    seed: int
    edited: np.ndarray | None = None
    error: str | None = None
    report: VerifyReport | None = None
    attempts: list[dict] = field(default_factory=list)
    scope: str = "global"
    fallback: str | None = None
    regions_dropped: int = 0


class EditStage(Stage):
    """Stage 2 editing in an actor pool (see the module docstring for the steps)."""

    name = "edit"

    def setup(self) -> None:
        """Load the editor once per actor, and the privacy verifier when ``edit.verify``."""
        from unsafe2safe_ray.detectors.faces import threads_for
        from unsafe2safe_ray.editors import load_editor

        self.threads = threads_for(self.config.edit)
        try:
            import cv2

            cv2.setNumThreads(self.threads)
        except ImportError:  # pragma: no cover - opencv is a dependency
            pass
        self.editor = load_editor(self.config.edit.editor, self.config)
        self.verifier = self._load_verifier() if self.config.edit.verify else None

    def _load_verifier(self):
        # Fail closed: with verification on, a missing verifier stops the actor instead of
        # letting unverified edits through.
        from unsafe2safe_ray.detectors.verifier import PrivacyVerifier

        verifier = PrivacyVerifier(self.config.verify, threads=self.threads,
                                   face_settings=self.config.detect.face_detector_kwargs())
        verifier.warm_up()
        return verifier

    # -- 1. selection ---------------------------------------------------------------------------

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Edit the selected rows; other rows pass through untouched."""
        if not hasattr(self, "editor"):
            self.setup()
        jobs = [job for row in rows if self._selected(row) and (job := self._job(row)) is not None]
        if jobs:
            self._edit_round(jobs, strength=0)
            self._check_and_escalate(jobs)
            for job in jobs:
                self._finish(job)
        return rows

    def _selected(self, row: dict[str, Any]) -> bool:
        if row.get("status") in (records.FAILED, records.EDITED) or row.get("image") is None:
            return False
        return bool(row.get("privacy_flag")) or self.config.edit.edit_all

    def _job(self, row: dict[str, Any]) -> _EditJob | None:
        """The row's edit job, or None when the row cannot or need not be edited (a failed
        row, or an unflagged row that a region editor has nothing to change in)."""
        original = records.get_image(row)
        height, width = original.shape[:2]
        regions, dropped = [], 0
        for index, region in enumerate(row.get("regions") or []):
            if not isinstance(region, dict) or region.get("bbox") is None:
                continue  # a category without a place (a VLM flag): nothing to clip
            try:
                box = clip_box(region["bbox"], height, width)
            except BoxError as e:
                records.fail(row, f"edit: region {index} ({region.get('category', '?')}): {e}; fix the "
                                  "detector or VLM output, or drop the region")
                return None
            if box is None:
                dropped += 1
                continue
            regions.append(dict(region, bbox=box))
        if getattr(self.editor, "needs_regions", False) and not regions:
            if not row.get("privacy_flag"):
                return None  # nothing sensitive and nothing to obscure: the row passes as it is
            records.fail(row, f"edit: flagged but no regions to obscure ({dropped} outside the image); the "
                              f"{self.editor.name} editor only changes pixels inside regions: add a detector "
                              "stage (stages: [detect, ...]) or use a generative editor (edit.editor=flowedit)")
            return None
        public = row.get("public_caption") or ""
        target = row.get("combined_caption") or public
        return _EditJob(
            row=row, original=original, regions=regions,
            source_prompt=row.get("private_caption") or public, target_prompt=target,
            instruction=row.get("edit_instruction") or target, seed=int(row.get("seed") or 0),
            regions_dropped=dropped,
        )

    # -- 2-4. bucketed editing ------------------------------------------------------------------

    def _edit_round(self, jobs: list[_EditJob], strength: int) -> None:
        """Edit ``jobs`` at ``strength`` in same-size buckets. On success a job's ``edited``
        is replaced; on failure ``edited`` is kept (None in the first round) and the attempt
        records the error."""
        crop_jobs = [job for job in jobs if self._uses_crops(job)]
        if crop_jobs:
            self._edit_crops(crop_jobs, strength)
        buckets: dict[tuple[int, int], list[_EditJob]] = {}
        for job in jobs:
            if not self._uses_crops(job):
                buckets.setdefault(self._size(job, scale=1.0), []).append(job)
        batch_size = self.config.edit.batch_size
        for size, bucket in buckets.items():
            for start in range(0, len(bucket), batch_size):
                self._edit_bucket(bucket[start:start + batch_size], size, strength)

    def _uses_crops(self, job: _EditJob) -> bool:
        # Crops need regions and an editor with a working grid (classic works in place anyway).
        return self.config.edit.scope == "crops" and bool(job.regions) and self.editor.size_multiple is not None

    def _edit_crops(self, jobs: list[_EditJob], strength: int) -> None:
        """``edit.scope=crops``: edit a window around each region at the editor's working bucket,
        crops of many images batched by bucket, and paste them back inside feathered region
        masks (``editors.crops``). A job whose crop fails at full and at fallback scale keeps its
        previous edit (None in the first round: then it fails)."""
        from unsafe2safe_ray.editors.crops import crop_windows, paste_window, region_prompts

        edit = self.config.edit
        multiple = max(self.editor.size_multiple, edit.bucket_multiple)
        items: list[tuple[_EditJob, Any, EditRequest, int]] = []
        for job in jobs:
            height, width = job.original.shape[:2]
            target, instruction = region_prompts(job.regions, job.target_prompt, job.instruction)
            for index, window in enumerate(crop_windows(job.regions, height, width, edit.crop_margin,
                                                        edit.crop_min_side)):
                x0, y0, x1, y1 = window.box
                crop = job.original[y0:y1, x0:x1]
                seed = records.derive_seed(self._seed(job, strength), f"crop-{index}")
                request = EditRequest(image=crop, source_prompt=job.source_prompt, target_prompt=target,
                                      instruction=instruction, regions=window.regions, seed=seed, strength=strength)
                items.append((job, window, request, seed))
        outputs: dict[int, np.ndarray | None] = {}
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (_job, window, _request, _seed) in enumerate(items):
            size = working_size(*window.size, multiple=multiple, max_side=edit.max_side,
                                target_area=edit.crop_size * edit.crop_size)
            buckets.setdefault(size, []).append(i)
        errors: dict[int, str] = {}
        for size, members in buckets.items():
            for start in range(0, len(members), edit.batch_size):
                chunk = members[start:start + edit.batch_size]
                try:
                    edited = self.editor.edit([_at_size(items[i][2], size) for i in chunk])
                    outputs.update(zip(chunk, edited))
                except Exception as batch_error:  # noqa: BLE001 - retried alone, smaller
                    _release_accelerator_memory()
                    small = working_size(*size, multiple=multiple, max_side=edit.max_side, scale=edit.fallback_scale)
                    for i in chunk:
                        try:
                            (outputs[i],) = self.editor.edit([_at_size(items[i][2], small)])
                        except Exception as error:  # noqa: BLE001 - this job's failure
                            _release_accelerator_memory()
                            errors[i] = (f"edit: {type(batch_error).__name__} on a crop batch, then "
                                         f"{type(error).__name__} alone at {small[0]}x{small[1]}: {error}")
        for job in jobs:
            mine = [i for i, item in enumerate(items) if item[0] is job]
            failed = [errors[i] for i in mine if i in errors]
            if failed:
                job.attempts.append({"strength": strength, "seed": self._seed(job, strength), "scope": "crops",
                                     "error": failed[0]})
                if job.edited is None:
                    job.error = failed[0]
                continue
            composite = job.original
            for i in mine:
                composite = paste_window(composite, job.original, items[i][1], outputs[i], edit.dilation, edit.feather)
            job.edited = composite
            job.scope = "crops"
            job.attempts.append({"strength": strength, "seed": self._seed(job, strength), "scale": 1.0,
                                 "crops": len(mine)})

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
        return _at_size(EditRequest(
            image=job.original, source_prompt=job.source_prompt, target_prompt=job.target_prompt,
            instruction=job.instruction, regions=job.regions, seed=self._seed(job, strength), strength=strength,
        ), size)

    @staticmethod
    def _seed(job: _EditJob, strength: int) -> int:
        # Retries get another seed derived from the row's, so reruns retry identically.
        return job.seed if strength == 0 else records.derive_seed(job.seed, f"edit-retry-{strength}")

    # -- 5. check and escalate (the one routine, for every editor) ------------------------------

    def _check_and_escalate(self, jobs: list[_EditJob]) -> None:
        pending = [job for job in jobs if job.error is None]
        self._check(pending)
        for strength in range(1, self.config.edit.retries + 1):
            failing = [job for job in pending if job.report.leaks]
            if not failing:
                break
            self._edit_round(failing, strength=strength)
            self._check(failing)
        failing = [job for job in pending if job.report.leaks]
        if failing and self.config.edit.classic_fallback:
            self._classic_fill(failing)
            self._check(failing)
        for job in pending:
            if _did_nothing(job.report):
                job.error = (f"edit: the {self.editor.name} editor returned the image unchanged "
                             f"({self.config.edit.retries} retries); check edit.editor and its model")
            elif job.report.leaks:
                job.error = (f"edit: privacy check still fails after {self.config.edit.retries} retries"
                             f"{' and classic ' + job.fallback if job.fallback else ''}: "
                             f"{leak_summary(job.report.leaks)}")
            elif job.report.missing:
                job.error = f"edit: required verification check(s) {job.report.missing} did not run"

    def _check(self, jobs: list[_EditJob]) -> None:
        """Check each job's current edit against its read-only original."""
        for job in jobs:
            unchanged = _unchanged_regions(job.original, job.edited, job.regions)
            if self.verifier is not None:
                report = self.verifier.check(job.original, job.edited, job.regions)
            else:
                report = VerifyReport(leaks=[], checks={}, checks_run=[],
                                      required=list(self.config.verify.required_checks))
            report.leaks = unchanged + report.leaks
            job.report = report
            job.attempts[-1]["ok"] = report.ok
            job.attempts[-1]["leaks"] = [leak_record(leak) for leak in report.leaks]

    def _classic_fill(self, jobs: list[_EditJob]) -> None:
        from unsafe2safe_ray.editors.classic import obscure_regions

        method, dilation = self.config.verify.escalation_method, self.config.verify.escalation_dilation
        for job in jobs:
            if _did_nothing(job.report):
                continue
            targets = leak_targets(job.report, job.regions)
            if not targets:
                continue
            job.edited = obscure_regions(job.edited, targets, method, dilation)
            job.fallback = method
            job.attempts.append({"strength": None, "seed": None, "scale": 1.0, "classic": method})

    # -- 6. the row -----------------------------------------------------------------------------

    def _finish(self, job: _EditJob) -> None:
        row = job.row
        if job.error is not None:
            records.fail(row, job.error, stage=self.name)
            return
        records.set_image(row, job.edited)
        row["status"] = records.EDITED
        row["editor"] = self.editor.name if not job.fallback else f"{self.editor.name}+{job.fallback}"
        report = job.report
        records.update_verification(
            row,
            verified=bool(report.checks_run),
            ok=report.ok if report.checks_run else None,
            checks_run=list(report.checks_run),
            checks_skipped=[c for c in ("faces", "text") if c not in report.checks_run],
            scope=job.scope,
            fallback=job.fallback,
            regions_dropped=job.regions_dropped,
            attempts=job.attempts,
            leaks=[leak_record(leak) for leak in report.leaks],
            checks={str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in report.checks.items()
                    if isinstance(v, (bool, int, float, np.generic)) or v is None},
        )


def _unchanged_regions(original: np.ndarray, edited: np.ndarray, regions: list[dict]) -> list[Leak]:
    """The regions whose pixels the edit left as they were, as ``unchanged_pixels`` leaks. Flat
    regions (nothing to hide) do not count. An output equal to its input is one leak without a
    box: the editor did nothing, so no classic fill papers over it and the row fails."""
    if np.array_equal(original, edited):
        return [Leak(category="", bbox=None, kind="unchanged_pixels")]
    leaks = []
    for region in regions:
        x0, y0, x1, y1 = region["bbox"]
        before, after = original[y0:y1, x0:x1], edited[y0:y1, x0:x1]
        if np.array_equal(before, after) and int(before.max()) - int(before.min()) >= _FLAT_RANGE:
            leaks.append(Leak(category=region.get("category", ""), bbox=[x0, y0, x1, y1], kind="unchanged_pixels"))
    return leaks


def _at_size(request: EditRequest, size: tuple[int, int]) -> EditRequest:
    """``request`` with its image resized to ``size`` (height, width) and its regions scaled."""
    height, width = request.image.shape[:2]
    sy, sx = size[0] / height, size[1] / width
    regions = [dict(r, bbox=[r["bbox"][0] * sx, r["bbox"][1] * sy, r["bbox"][2] * sx, r["bbox"][3] * sy])
               for r in request.regions]
    return EditRequest(image=resize_image(request.image, size), source_prompt=request.source_prompt,
                       target_prompt=request.target_prompt, instruction=request.instruction, regions=regions,
                       seed=request.seed, strength=request.strength)


def _did_nothing(report: VerifyReport) -> bool:
    return any(leak.kind == "unchanged_pixels" and leak.bbox is None for leak in report.leaks)


def _release_accelerator_memory() -> None:
    """After an OOM, hand cached CUDA blocks back before retrying smaller (no torch import if
    the editor never loaded it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
