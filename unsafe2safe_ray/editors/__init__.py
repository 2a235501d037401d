"""Stage 2 editors behind one interface (``editors.base.Editor``), chosen by name."""

from __future__ import annotations

from typing import Any

from unsafe2safe_ray.editors.base import EditRequest, Editor

from unsafe2safe_ray.config import EDITOR_NAMES

__all__ = ["EDITOR_NAMES", "EditRequest", "Editor", "load_editor"]


def load_editor(name: str, config: Any) -> Editor:
    """Build the editor ``name`` from a ``JobConfig`` (its ``edit`` section; ``classic`` also
    reads ``classic``). Model sources: hub id, local folder, ``s3://``/``gs://`` prefix or
    ``tiny://<name>`` (``unsafe2safe_ray.models``). ``fake:<failure>`` builds
    the test fake with an injected failure (see ``editors.fake``)."""
    from unsafe2safe_ray.models import resolve_model_source as _resolve

    edit = config.edit
    storage_options = config.io.storage_options

    def resolve_model_source(source: str) -> str:
        return _resolve(source, storage_options=storage_options)

    base, _, option = name.partition(":")
    if base == "instruct-pix2pix":
        from unsafe2safe_ray.editors.instruct_pix2pix import InstructPix2PixEditor

        return InstructPix2PixEditor(
            resolve_model_source(edit.instruct_pix2pix_model), steps=edit.steps,
            guidance=edit.guidance, image_guidance=edit.image_guidance, dtype=edit.dtype,
        )
    if base == "flowedit":
        from unsafe2safe_ray.editors.flowedit_sd3 import FlowEditSD3Editor

        return FlowEditSD3Editor(
            resolve_model_source(edit.flowedit_model), steps=edit.steps,
            src_guidance=edit.flowedit_src_guidance, tar_guidance=edit.flowedit_tar_guidance,
            n_min=edit.flowedit_n_min, n_max=edit.flowedit_n_max, n_avg=edit.flowedit_n_avg,
            max_sequence_length=edit.max_sequence_length, dtype=edit.dtype,
        )
    if base == "kontext":
        from unsafe2safe_ray.editors.flux_kontext import FluxKontextEditor

        return FluxKontextEditor(
            resolve_model_source(edit.kontext_model), steps=edit.steps, guidance=edit.guidance,
            max_sequence_length=edit.max_sequence_length, dtype=edit.dtype,
        )
    if base == "classic":
        from unsafe2safe_ray.editors.classic import ClassicEditor, ObscureSettings

        return ClassicEditor(ObscureSettings.from_config(config.classic))
    if base == "fake":
        from unsafe2safe_ray.editors.fake import FakeEditor

        return FakeEditor(option or "none")
    raise ValueError(f"unknown editor {name!r}; known: {', '.join(EDITOR_NAMES)}")
