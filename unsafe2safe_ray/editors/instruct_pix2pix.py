"""InstructPix2Pix editor: diffusers ``StableDiffusionInstructPix2PixPipeline`` driven by the
Stage 1 edit instruction (works with MagicBrush-style checkpoints of the same architecture)."""

from __future__ import annotations

import numpy as np

from unsafe2safe_ray.editors.base import (
    EditRequest,
    Editor,
    check_batch,
    generators,
    place_pipeline,
    quiet_diffusers,
    to_uint8,
    torch_device_and_dtype,
)

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5


class InstructPix2PixEditor(Editor):
    """Batched instruction-driven editing. Text guidance 7.5 and image guidance 1.5 by default;
    each strength level raises text guidance by half and lowers image guidance towards 1.0 (the
    image then constrains the output less, so identity features change more)."""

    name = "instruct-pix2pix"
    # VAE factor 8; the UNet pads odd latent sizes itself.
    size_multiple = 8

    def __init__(
        self,
        model_source: str | None = None,
        *,
        pipe=None,
        steps: int | None = None,
        guidance: float | None = None,
        image_guidance: float = 1.5,
        dtype: str = "auto",
    ) -> None:
        """Load the pipeline from ``model_source`` (hub id or local folder), or wrap an already
        built ``pipe`` (benchmarks build random full-size ones in memory)."""
        import torch
        quiet_diffusers()
        self.device, self.dtype = torch_device_and_dtype(dtype)
        if pipe is None and model_source is not None:
            # A folder written by `unsafe2safe finetune` carries its own two-text pipeline.
            from unsafe2safe_ray.train.model import is_finetuned_editor, load_editor_pipeline

            if is_finetuned_editor(model_source):
                pipe = load_editor_pipeline(model_source, dtype=self.dtype)
        if pipe is None:
            from diffusers import StableDiffusionInstructPix2PixPipeline

            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
                model_source, dtype=self.dtype, safety_checker=None, requires_safety_checker=False
            )
        self.pipe = place_pipeline(pipe, self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = steps or DEFAULT_STEPS
        self.guidance = DEFAULT_GUIDANCE if guidance is None else guidance
        self.image_guidance = image_guidance
        self._torch = torch

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        """Edit one same-size batch; returns uint8 images of the input size."""
        _, _, strength = check_batch(requests)
        from PIL import Image

        # A fine-tuned two-text editor also reads the caption of the wanted image.
        texts = {"caption": [req.target_prompt for req in requests]} if getattr(self.pipe, "two_text", False) else {}
        with self._torch.inference_mode():
            out = self.pipe(
                **texts,
                prompt=[req.instruction or req.target_prompt for req in requests],
                image=[Image.fromarray(req.image) for req in requests],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance * (1.0 + 0.5 * strength),
                image_guidance_scale=max(1.0, self.image_guidance - 0.25 * strength),
                generator=generators([req.seed for req in requests]),
                output_type="np",
            ).images
        return to_uint8(out)
