"""FlowEdit on Stable Diffusion 3: training-free, inversion-free text editing with dual prompts.

Written from the algorithm of the FlowEdit paper (Kulikov et al., 2024, "FlowEdit:
Inversion-Free Text-Based Editing Using Pre-Trained Flow Models"). The idea: instead of inverting
the source image to noise and regenerating, integrate an ODE directly from the source latent to
the target latent whose velocity is the *difference* of the model's target-conditioned and
source-conditioned velocities, evaluated on noisy versions of the source that share one noise
draw. With rectified flow ``z_t = (1 - t) x0 + t n``:

    z_fe <- x_src
    for the steps i from n_max down to n_min+1 (high noise to low):
        n ~ N(0, I)                                  (averaged over n_avg draws)
        z_src = (1 - t_i) x_src + t_i n              a noisy source
        z_tar = z_fe + z_src - x_src                 the same noise offset around the edit
        v = V(z_tar, t_i, target) - V(z_src, t_i, source)   (each with its own CFG scale)
        z_fe <- z_fe + (t_{i-1} - t_i) v
    if n_min > 0: noise z_fe to t_{n_min} the same way and finish with ordinary sampling under
    the target prompt.

With n_max = 0 no step runs and the output is the source after a VAE round trip. Only diffusers
*components* are used (transformer, VAE, the three text encoders through ``encode_prompt``, the
flow-match scheduler's sigma schedule); the loop is ours.
"""

from __future__ import annotations

import math

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


class FlowEditSD3Editor(Editor):
    """Batched FlowEdit with the Unsafe2Safe paper's settings by default: T=50, n_avg=1,
    source CFG 3.5, target CFG 13.5, n_min=0, n_max=33.

    The source prompt is the private caption, the target prompt the combined (or public)
    caption. Each strength level widens the edit window (n_max) by a tenth of T, which lets the
    target prompt change coarser structure such as face shape and hair.
    """

    name = "flowedit"
    # VAE factor 8 times the transformer's 2x2 patches.
    size_multiple = 16

    def __init__(
        self,
        model_source: str | None = None,
        *,
        pipe=None,
        steps: int | None = None,
        src_guidance: float = 3.5,
        tar_guidance: float = 13.5,
        n_min: int = 0,
        n_max: int = 33,
        n_avg: int = 1,
        max_sequence_length: int = 256,
        dtype: str = "auto",
    ) -> None:
        """Load the pipeline from ``model_source`` (hub id or local folder), or wrap an already
        built ``pipe`` (benchmarks build random full-size ones in memory)."""
        import torch
        quiet_diffusers()
        self.steps = steps or DEFAULT_STEPS
        if not 0 <= n_min <= n_max <= self.steps:
            raise ValueError(f"FlowEdit needs 0 <= n_min <= n_max <= steps, got {n_min}, {n_max}, {self.steps}")
        self.device, self.dtype = torch_device_and_dtype(dtype)
        # The pipeline object only holds the components and encodes prompts; its __call__ is
        # never used.
        if pipe is None:
            from diffusers import StableDiffusion3Pipeline

            pipe = StableDiffusion3Pipeline.from_pretrained(model_source, dtype=self.dtype)
        self.pipe = place_pipeline(pipe, self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.src_guidance, self.tar_guidance = src_guidance, tar_guidance
        self.n_min, self.n_max, self.n_avg = n_min, n_max, n_avg
        self.max_sequence_length = max_sequence_length
        self._torch = torch

    # -- public ---------------------------------------------------------------------------------

    def edit(self, requests: list[EditRequest]) -> list[np.ndarray]:
        """Edit one same-size batch (sides on the 16 px grid); returns uint8 images."""
        _, _, strength = check_batch(requests)
        n_max = min(self.steps, self.n_max + strength * math.ceil(0.1 * self.steps))
        with self._torch.inference_mode():
            return self._flowedit(requests, n_max)

    # -- the algorithm --------------------------------------------------------------------------

    def _flowedit(self, requests: list[EditRequest], n_max: int) -> list[np.ndarray]:
        torch = self._torch
        batch = len(requests)
        gens = generators([req.seed for req in requests])

        # 1. Text conditions: source, target, and one shared unconditional ("") embedding.
        src_embeds, uncond_embeds, src_pooled, uncond_pooled = self.pipe.encode_prompt(
            prompt=[req.source_prompt for req in requests], prompt_2=None, prompt_3=None,
            device=self.device, do_classifier_free_guidance=True, negative_prompt=[""] * batch,
            max_sequence_length=self.max_sequence_length,
        )
        tar_embeds, _, tar_pooled, _ = self.pipe.encode_prompt(
            prompt=[req.target_prompt for req in requests], prompt_2=None, prompt_3=None,
            device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        # One forward per step evaluates [uncond(z_src), src(z_src), uncond(z_tar), tar(z_tar)].
        text = torch.cat([uncond_embeds, src_embeds, uncond_embeds, tar_embeds])
        pooled = torch.cat([uncond_pooled, src_pooled, uncond_pooled, tar_pooled])

        # 2. Source latents x_src (the VAE posterior mode: deterministic).
        x_src = self._encode([req.image for req in requests])

        # 3. The flow-match sigma schedule of T steps (sigmas[T] = 0).
        sigmas, timesteps = self._schedule(x_src.shape[-2:])

        # 4. FlowEdit: integrate the velocity difference from step T - n_max to T - n_min.
        first, last = self.steps - n_max, self.steps - self.n_min
        z_fe = x_src.clone()
        for i in range(first, last):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            v_delta = torch.zeros_like(x_src)
            for _ in range(self.n_avg):
                noise = self._noise(gens, x_src)
                z_src = (1.0 - sigma) * x_src + sigma * noise
                z_tar = z_fe + z_src - x_src
                v_src, v_tar = self._velocities(z_src, z_tar, timesteps[i], text, pooled)
                v_delta += (v_tar - v_src) / self.n_avg
            z_fe = z_fe + (sigma_next - sigma) * v_delta

        # 5. n_min > 0: noise the edit to t_{n_min} with the same construction, then ordinary
        #    target-prompt sampling for the remaining low-noise steps.
        if self.n_min > 0 and n_max > 0:
            sigma = sigmas[last]
            z = z_fe + (1.0 - sigma) * x_src + sigma * self._noise(gens, x_src) - x_src
            for i in range(last, self.steps):
                _, v_tar = self._velocities(z, z, timesteps[i], text, pooled)
                z = z + (sigmas[i + 1] - sigmas[i]) * v_tar
            z_fe = z

        # 6. Decode.
        return self._decode(z_fe)

    def _velocities(self, z_src, z_tar, timestep, text, pooled):
        """CFG velocities of the source branch (source prompt, src_guidance) and of the target
        branch (target prompt, tar_guidance), from one batched transformer forward."""
        torch = self._torch
        hidden = torch.cat([z_src, z_src, z_tar, z_tar]).to(self.dtype)
        # SD3 takes the timestep on the scheduler's 0..1000 scale.
        t = timestep.expand(hidden.shape[0]).to(self.device)
        out = self.pipe.transformer(
            hidden_states=hidden, timestep=t, encoder_hidden_states=text,
            pooled_projections=pooled, return_dict=False,
        )[0].float()
        src_u, src_c, tar_u, tar_c = out.chunk(4)
        v_src = src_u + self.src_guidance * (src_c - src_u)
        v_tar = tar_u + self.tar_guidance * (tar_c - tar_u)
        return v_src, v_tar

    def _schedule(self, latent_hw):
        scheduler = self.pipe.scheduler
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            # SD3.5-style resolution-dependent shift: mu grows linearly with the token count.
            patch = self.pipe.transformer.config.patch_size
            seq_len = (latent_hw[0] // patch) * (latent_hw[1] // patch)
            cfg = scheduler.config
            slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len - cfg.base_image_seq_len)
            kwargs["mu"] = cfg.base_shift + slope * (seq_len - cfg.base_image_seq_len)
        scheduler.set_timesteps(self.steps, device=self.device, **kwargs)
        return scheduler.sigmas.float().to(self.device), scheduler.timesteps.to(self.device)

    def _noise(self, gens, like):
        """One standard normal draw per image from that image's own generator."""
        torch = self._torch
        draws = [torch.randn(tuple(like.shape[1:]), generator=g, dtype=torch.float32) for g in gens]
        return torch.stack(draws).to(like.device)

    def _encode(self, images: list[np.ndarray]):
        torch = self._torch
        vae = self.pipe.vae
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist.mode().float()
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def _decode(self, latents) -> list[np.ndarray]:
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        pixels = vae.decode(latents.to(vae.dtype), return_dict=False)[0].float()
        pixels = (pixels / 2.0 + 0.5).permute(0, 2, 3, 1).cpu().numpy()
        # to_uint8 raises on NaN before clipping, so a diverged edit never becomes black pixels.
        return to_uint8(pixels)
