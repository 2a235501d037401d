"""FLUX.1 Kontext editor: diffusers ``FluxKontextPipeline`` driven by the edit instruction."""

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

DEFAULT_STEPS = 28
DEFAULT_GUIDANCE = 2.5


class FluxKontextEditor(Editor):
    """Batched instruction-driven editing with FLUX.1 Kontext (distilled guidance 2.5 by
    default; each strength level raises it by half).

    The pipeline by default rescales the request to about 1 MP (``max_area=1024**2``) and snaps
    the input image to its preferred resolutions (``_auto_resize``). Here the edit stage already
    chose the working size (native or area buckets), so both are pinned to the given size.
    """

    name = "kontext"
    # VAE factor 8 times the 2x2 latent packing.
    size_multiple = 16

    def __init__(
        self,
        model_source: str | None = None,
        *,
        pipe=None,
        steps: int | None = None,
        guidance: float | None = None,
        max_sequence_length: int = 256,
        dtype: str = "auto",
    ) -> None:
        """Load the pipeline from ``model_source`` (hub id or local folder), or wrap an already
        built ``pipe`` (benchmarks build random full-size ones in memory)."""
        import torch
        quiet_diffusers()
        self.device, self.dtype = torch_device_and_dtype(dtype)
        if pipe is None:
            from diffusers import FluxKontextPipeline

            pipe = FluxKontextPipeline.from_pretrained(model_source, dtype=self.dtype)
        self.pipe = place_pipeline(pipe, self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps = steps or DEFAULT_STEPS
        self.guidance = DEFAULT_GUIDANCE if guidance is None else guidance
        self.max_sequence_length = max_sequence_length
        self._torch = torch

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        """Edit one same-size batch (sides on the 16 px grid); returns uint8 images."""
        height, width, strength = check_batch(requests)
        from PIL import Image

        with self._torch.inference_mode():
            out = self.pipe(
                image=[Image.fromarray(req.image) for req in requests],
                prompt=[req.instruction or req.target_prompt for req in requests],
                height=height,
                width=width,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance * (1.0 + 0.5 * strength),
                generator=generators([req.seed for req in requests]),
                max_sequence_length=self.max_sequence_length,
                output_type="np",
                max_area=height * width,
                _auto_resize=False,
            ).images
        images = to_uint8(out)
        if images[0].shape[:2] != (height, width):
            raise RuntimeError(f"kontext returned {images[0].shape[:2]} for a {(height, width)} request")
        return images
