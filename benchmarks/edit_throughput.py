"""Stage 2 editor throughput: a bare editor-call loop, the EditStage outside Ray, and the same
stage inside a Ray Data pipeline (actor pool), on the same images. Prints images/s and ratios.

Two model modes, neither downloads anything:

- ``--tiny``: the tiny random-weight pipelines of the ``tiny`` profile (runs on a laptop CPU).
- ``--full``: random-weight FULL-SIZE architectures built from config in memory, so a bare GPU
  machine gives real throughput (compute does not depend on the weights' values):
  SD3-medium (MMDiT 2B, CLIP-L, CLIP-bigG, T5-XXL, 16-channel VAE) for ``flowedit``,
  SD1.5 (UNet 860M, CLIP-L) for ``instruct-pix2pix``, FLUX.1 (12B, CLIP-L, T5-XXL) for ``kontext``.
  Tokenizers are the tiny local ones; prompt lengths (77 CLIP, ``--seq`` T5 tokens) are the real
  padded lengths, so the text-encoder cost matches too. ``--layers N`` caps every depth, only for
  checking the shapes on a small machine.

Example (GPU): ``python benchmarks/edit_throughput.py --full --editor flowedit --images 16
--size 1024x1024 --batch 4 --steps 28 --n-max 19``. Needs torch, transformers, diffusers; ray
for the pipeline measurement (skipped with a note when missing).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.stages.edit import EditStage

SOURCE = "a man with short hair and glasses wearing a red jacket standing next to a sign with text"
TARGET = "a young woman with long curly hair wearing a blue shirt standing next to a plain sign"
INSTRUCTION = "change the man into a young woman with curly hair and a blue shirt, remove the text"


# -- random full-size architectures --------------------------------------------------------------

def _cap(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def _clip(tok, hidden, layers, heads, inter, proj, act, with_projection):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, projection_dim=proj,
                         max_position_embeddings=77, hidden_act=act, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)


def _t5_xxl(cap):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
                                   num_layers=_cap(24, cap), num_heads=64, feed_forward_proj="gated-gelu",
                                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                   dropout_rate=0.0))


def _vae(latent_channels, cap, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         block_out_channels=[128, 256, 512, 512], layers_per_block=_cap(2, cap),
                         latent_channels=latent_channels, norm_num_groups=32, **extra)


def build_scheduler(editor: str):
    """The editor's scheduler. Built on the CPU, outside any ``torch.device`` context: scheduler
    constructors call ``np.array`` on tensors they create, which fails for CUDA tensors."""
    from diffusers import EulerAncestralDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if editor == "flowedit":
        return FlowMatchEulerDiscreteScheduler(shift=3.0)
    if editor == "instruct-pix2pix":
        return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if editor == "kontext":
        return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                               base_image_seq_len=256, max_image_seq_len=4096)
    raise ValueError(f"no full-size architecture for {editor!r}")


def build_full_pipeline(editor: str, cap: int | None, device=None):
    """A random-weight pipeline with the real model's architecture (see the module docstring).
    Its models are created on ``device`` (None: the current default); its scheduler on the CPU."""
    import contextlib

    import torch

    scheduler = build_scheduler(editor)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return _build_full_pipeline(editor, cap, scheduler)


def _build_full_pipeline(editor: str, cap: int | None, scheduler):
    from diffusers import (
        FluxKontextPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline,
        StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel,
    )

    from unsafe2safe_ray.tiny_models.diffusion import _clip_tokenizer, _t5_tokenizer

    tok = _clip_tokenizer()
    if editor == "flowedit":  # stabilityai/stable-diffusion-3-medium-diffusers
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(
                sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=_cap(24, cap),
                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192),
            scheduler=scheduler,
            vae=_vae(16, cap, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                     use_post_quant_conv=False),
            text_encoder=_clip(tok, 768, _cap(12, cap), 12, 3072, 768, "quick_gelu", True), tokenizer=tok,
            text_encoder_2=_clip(tok, 1280, _cap(32, cap), 20, 5120, 1280, "gelu", True), tokenizer_2=tok,
            text_encoder_3=_t5_xxl(cap), tokenizer_3=_t5_tokenizer(512),
        )
    if editor == "instruct-pix2pix":  # timbrooks/instruct-pix2pix (SD1.5 with an 8-channel input)
        return StableDiffusionInstructPix2PixPipeline(
            unet=UNet2DConditionModel(
                sample_size=64, in_channels=8, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
                layers_per_block=_cap(2, cap), cross_attention_dim=768, attention_head_dim=8,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
            vae=_vae(4, cap, scaling_factor=0.18215),
            text_encoder=_clip(tok, 768, _cap(12, cap), 12, 3072, 768, "quick_gelu", False), tokenizer=tok,
            scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    if editor == "kontext":  # black-forest-labs/FLUX.1-Kontext-dev
        return FluxKontextPipeline(
            transformer=FluxTransformer2DModel(
                patch_size=1, in_channels=64, num_layers=_cap(19, cap), num_single_layers=_cap(38, cap),
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56]),
            scheduler=scheduler,
            vae=_vae(16, cap, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                     use_post_quant_conv=False),
            text_encoder=_clip(tok, 768, _cap(12, cap), 12, 3072, 768, "quick_gelu", False), tokenizer=tok,
            text_encoder_2=_t5_xxl(cap), tokenizer_2=_t5_tokenizer(512),
        )
    raise ValueError(f"no full-size architecture for {editor!r}")


def build_editor(editor: str, config, full: bool, cap: int | None):
    """The editor the stage would load, but on a random full-size pipeline when ``full``."""
    from unsafe2safe_ray.editors import load_editor

    if not full:
        return load_editor(editor, config)
    import torch

    from unsafe2safe_ray.editors.base import torch_device_and_dtype

    device, dtype = torch_device_and_dtype(config.edit.dtype)
    previous = torch.get_default_dtype()
    # Build on the device in the target dtype: random init of ~10B parameters is seconds on a
    # GPU and would be minutes (and 4x the memory) in float32 on the CPU.
    torch.set_default_dtype(dtype)
    try:
        pipe = build_full_pipeline(editor, cap, device)
    finally:
        torch.set_default_dtype(previous)
    edit = config.edit
    if editor == "flowedit":
        from unsafe2safe_ray.editors.flowedit_sd3 import FlowEditSD3Editor

        return FlowEditSD3Editor(pipe=pipe, steps=edit.steps, src_guidance=edit.flowedit_src_guidance,
                                 tar_guidance=edit.flowedit_tar_guidance, n_min=edit.flowedit_n_min,
                                 n_max=edit.flowedit_n_max, n_avg=edit.flowedit_n_avg,
                                 max_sequence_length=edit.max_sequence_length, dtype=edit.dtype)
    if editor == "instruct-pix2pix":
        from unsafe2safe_ray.editors.instruct_pix2pix import InstructPix2PixEditor

        return InstructPix2PixEditor(pipe=pipe, steps=edit.steps, guidance=edit.guidance,
                                     image_guidance=edit.image_guidance, dtype=edit.dtype)
    from unsafe2safe_ray.editors.flux_kontext import FluxKontextEditor

    return FluxKontextEditor(pipe=pipe, steps=edit.steps, guidance=edit.guidance,
                             max_sequence_length=edit.max_sequence_length, dtype=edit.dtype)


class BenchEditStage(EditStage):
    """The real EditStage; only ``setup`` differs (random full-size weights when asked)."""

    def __init__(self, config, full: bool, cap: int | None) -> None:
        super().__init__(config)
        self.full, self.cap = full, cap

    def setup(self) -> None:
        self.editor = build_editor(self.config.edit.editor, self.config, self.full, self.cap)
        self.verifier = None


# -- the measurements ---------------------------------------------------------------------------

def make_rows(n: int, height: int, width: int) -> list[dict]:
    """Flagged rows with textured pixels and the Stage 1 texts."""
    rows = []
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    for i in range(n):
        key = f"{i:09d}"
        rng = np.random.default_rng(i)
        image = (200 * (0.5 * y + 0.5 * x) + rng.integers(0, 55, (height, width, 3))).astype(np.uint8)
        row = records.new_row(key, 0, f"mem://{key}", None, records.derive_seed(42, key))
        records.set_image(row, image)
        row.update(privacy_flag=True, private_caption=SOURCE, combined_caption=TARGET,
                   public_caption=TARGET, edit_instruction=INSTRUCTION)
        rows.append(row)
    return rows


def bare_loop(editor, rows: list[dict], batch: int, size: tuple[int, int]) -> float:
    """Seconds for plain ``editor.edit`` calls over pre-resized batches (no stage logic)."""
    from unsafe2safe_ray.editors.base import EditRequest, resize_image

    requests = [EditRequest(image=resize_image(records.get_image(r), size), source_prompt=SOURCE,
                            target_prompt=TARGET, instruction=INSTRUCTION, seed=r["seed"]) for r in rows]
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        editor.edit(requests[i:i + batch])
    return time.perf_counter() - start


def stage_loop(stage: EditStage, rows: list[dict], batch: int) -> tuple[float, int]:
    """Seconds for ``EditStage.process`` over Ray-sized batches, and how many rows it edited."""
    start = time.perf_counter()
    edited = 0
    for i in range(0, len(rows), batch):
        out = stage.process([dict(r) for r in rows[i:i + batch]])
        edited += sum(r["status"] == records.EDITED for r in out)
    return time.perf_counter() - start, edited


def ray_pipeline(stage: EditStage, rows: list[dict], batch: int) -> tuple[float, float, int]:
    """(wall seconds incl. actor start and model build, seconds the actor spent in the stage,
    edited rows) for the stage in a Ray Data actor pool. The busy time is the stage operator's
    remote wall time in Ray's own stats (``job.operator_seconds``)."""
    import ray

    from unsafe2safe_ray.job import operator_seconds

    from unsafe2safe_ray.stages.base import apply_stage, rows_to_table

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    tables = [rows_to_table(rows[i:i + batch]) for i in range(0, len(rows), batch)]
    ds = apply_stage(ray.data.from_arrow(tables), stage)
    start = time.perf_counter()
    busy, edited = 0.0, 0
    for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        edited += sum(status == records.EDITED for status in out.column("status").to_pylist())
    wall = time.perf_counter() - start
    busy = sum(s for name, s in operator_seconds(ds.stats()).items() if f"({stage.name})" in name)
    return wall, busy, edited


def plant_regions(rows: list[dict]) -> None:
    """One or two sensitive regions of realistic size per image: a face (about 5 % of the image)
    and, on every other image, a plate (about 3 %)."""

    for i, row in enumerate(rows):
        h, w = row["height"], row["width"]
        face = [int(w * 0.30), int(h * 0.20), int(w * 0.30 + w * 0.20), int(h * 0.20 + h * 0.24)]
        regions = [{"category": "people", "bbox": face}]
        if i % 2:
            regions.append({"category": "text_and_symbols",
                            "bbox": [int(w * 0.55), int(h * 0.75), int(w * 0.55 + w * 0.29), int(h * 0.75 + h * 0.10)]})
        row["regions"] = regions


def _scoped(stage: EditStage, steps: int | None = None, **edit_settings) -> EditStage:
    """A copy of ``stage`` with other ``edit`` settings, sharing its (already built) pipeline.
    ``steps`` goes to a shallow copy of the editor (FlowEdit's window kept at 2/3 of them)."""
    scoped = EditStage(stage.config.model_copy(update={"edit": stage.config.edit.model_copy(update=edit_settings)}))
    scoped.editor, scoped.verifier = stage.editor, None
    if steps is not None and steps != stage.editor.steps:
        scoped.editor = copy.copy(stage.editor)
        scoped.editor.steps = steps
        if hasattr(scoped.editor, "n_max"):
            scoped.editor.n_max = max(scoped.editor.n_min, (steps * 2) // 3)
    return scoped


def _timed(stage: EditStage, rows: list[dict], batch: int) -> tuple[float, list[dict]]:
    """Seconds for ``stage.process`` over ``batch``-row calls (after one warm-up call), and its rows."""
    stage.process([dict(r) for r in rows[:batch]])  # warm-up at this variant's sizes
    start = time.perf_counter()
    out = []
    for i in range(0, len(rows), batch):
        out += stage.process([dict(r) for r in rows[i:i + batch]])
    return time.perf_counter() - start, out


def parse_crop_variants(text: str, default_size: int, default_steps: int) -> list[tuple[int, int]]:
    """``"512,384,384:20"`` -> [(512, steps), (384, steps), (384, 20)]: crop side[:steps]."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        side, _, steps = item.partition(":")
        variants.append((int(side or default_size), int(steps or default_steps)))
    return variants or [(default_size, default_steps)]


def compare_scopes(stage: EditStage, rows: list[dict], batch: int, variants: list[tuple[int, int]],
                   crop_batch: int) -> None:
    """``edit.scope`` crops vs global on the same images and regions, same editor, same run:
    images/s of the global edit, then of every crop variant (crop side, steps; the FlowEdit
    window stays 2/3 of the steps) and its speed ratio against global, then fidelity of each
    crop edit: SSIM/PSNR outside the regions against the original (crops leave them
    byte-identical), and inside the regions and on the seam (a 16 px band around each region
    mask) against the whole-image edit."""

    import cv2
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from unsafe2safe_ray.editors.base import region_mask

    plant_regions(rows)
    n = len(rows)
    covered = [region_mask((r["height"], r["width"]), r["regions"], 0.0, 0).mean() for r in rows]
    print(f"regions cover {100 * min(covered):.1f}-{100 * max(covered):.1f} % of each image", flush=True)
    g_s, g_rows = _timed(_scoped(stage, scope="global"), rows, batch)
    print(f"scope global      : {n / g_s:8.3f} images/s  {g_s / n:6.3f} s/image  (batch {batch}, "
          f"steps {stage.config.edit.steps})", flush=True)
    for side, steps in variants:
        c_s, c_rows = _timed(_scoped(stage, steps, scope="crops", crop_size=side, batch_size=crop_batch),
                             rows, crop_batch)
        crops = sum(a.get("crops", 0) for r in c_rows
                    for a in ((r.get("verification") or {}).get("attempts") or []))
        print(f"scope crops {side:4d}² : {n / c_s:8.3f} images/s  {c_s / n:6.3f} s/image  (batch {crop_batch}, "
              f"steps {steps}, {crops or '?'} crops)  crops/global speed {g_s / c_s:.2f}x", flush=True)
        outside_equal, inside, seam = [], [], []
        for row, g_row, c_row in zip(rows, g_rows, c_rows):
            original, g_img, c_img = (records.get_image(x) for x in (row, g_row, c_row))
            grown = region_mask(original.shape[:2], row["regions"], stage.config.edit.dilation, 0)
            mask = grown > 0
            band = (cv2.dilate(grown.astype(np.uint8), np.ones((33, 33), np.uint8)) > 0) & ~mask
            outside_equal.append(bool(np.array_equal(c_img[~mask], original[~mask])))
            for sel, store in ((mask, inside), (band, seam)):
                a, b = c_img[sel].astype(np.float64), g_img[sel].astype(np.float64)
                store.append(peak_signal_noise_ratio(a, b, data_range=255))
        ssim = np.mean([structural_similarity(records.get_image(c), records.get_image(g), channel_axis=2)
                        for c, g in zip(c_rows, g_rows)])
        print(f"  outside the masks byte-identical to the original: {sum(outside_equal)}/{n}; vs global: "
              f"PSNR inside {np.mean(inside):.2f} dB, seam band {np.mean(seam):.2f} dB, "
              f"whole-image SSIM {ssim:.3f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--editor", default="flowedit", choices=["flowedit", "instruct-pix2pix", "kontext"])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny local pipelines (default)")
    mode.add_argument("--full", action="store_true", help="random full-size architectures")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", default=None, help="HxW of every image (default 128x128 tiny, 1024x1024 full)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-max", type=int, default=None, help="flowedit edit window (default 2/3 of steps)")
    p.add_argument("--seq", type=int, default=None, help="T5 tokens (default 32 tiny, 128 full)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--layers", type=int, default=None, help="cap every depth (shape checks only)")
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--scope", choices=["global", "crops"], default=None,
                   help="compare edit.scope=crops with global on planted regions (prints both and the ratio)")
    p.add_argument("--crop-size", default=None,
                   help="crop variants to time against global, SIDE[:STEPS] comma-separated, e.g. 512,384,384:20 "
                        "(default 64 tiny, 512 full; steps default --steps)")
    p.add_argument("--crop-batch", type=int, default=None, help="rows per call and crops per editor batch "
                   "for the crop variants (default --batch)")
    args = p.parse_args(argv)

    full = args.full
    height, width = (int(v) for v in (args.size or ("1024x1024" if full else "128x128")).split("x"))
    steps = args.steps or (28 if full else 4)
    n_max = args.n_max if args.n_max is not None else (steps * 2) // 3
    overrides = [f"edit.editor={args.editor}", f"edit.steps={steps}", f"edit.flowedit_n_max={n_max}",
                 f"edit.batch_size={args.batch}", f"edit.max_sequence_length={args.seq or (128 if full else 32)}",
                 f"edit.dtype={args.dtype}", f"edit.max_side={max(height, width)}", "edit.verify=false", "verify.required_checks=[]"]
    try:
        import torch

        gpu = torch.cuda.is_available()
    except ImportError:
        gpu = False
    overrides += ["edit.num_gpus=1" if gpu else "edit.num_gpus=0", "edit.num_cpus=1"]
    if args.scope:
        variants = parse_crop_variants(args.crop_size or "", 512 if full else 64, steps)
        overrides += [f"edit.crop_size={variants[0][0]}", "edit.bucket_multiple=16",
                      f"edit.crop_min_side={128 if full else 32}"]
    config = load_config("tiny", overrides=overrides)
    if not gpu:
        # Same intra-op threads as the Ray actor gets (Ray sets OMP_NUM_THREADS to its num_cpus);
        # otherwise the driver loops compete with spinning OpenMP threads on a busy machine.
        torch.set_num_threads(max(1, int(config.edit.num_cpus)))
    rows = make_rows(args.images, height, width)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"editor={args.editor} mode={'full-size random' if full else 'tiny'} device={device} "
          f"images={args.images} size={height}x{width} batch={args.batch} steps={steps}"
          + (f" n_max={n_max}" if args.editor == "flowedit" else ""), flush=True)

    # 1. Build once; warm up (kernels, allocator) on one batch.
    start = time.perf_counter()
    stage = BenchEditStage(config, full, args.layers)
    stage.setup()
    size = stage._size(stage._job(rows[0]), scale=1.0)
    params = {name: sum(p.numel() for p in module.parameters()) / 1e6
              for name, module in stage.editor.pipe.components.items() if hasattr(module, "parameters")}
    print(f"build: {time.perf_counter() - start:.1f}s  working size {size[0]}x{size[1]}  params (M): "
          + ", ".join(f"{name} {count:.0f}" for name, count in params.items()), flush=True)
    bare_loop(stage.editor, rows[:args.batch], args.batch, size)
    if args.scope:
        compare_scopes(stage, rows, args.batch, variants, args.crop_batch or args.batch)
        return

    # 2. Bare editor loop, then the stage outside Ray, on the same images.
    bare_s = bare_loop(stage.editor, rows, args.batch, size)
    stage_s, stage_edited = stage_loop(stage, rows, args.batch)
    n = len(rows)
    print(f"bare editor loop : {n / bare_s:8.3f} images/s  ({bare_s:.2f}s)")
    print(f"stage, no Ray    : {n / stage_s:8.3f} images/s  ({stage_s:.2f}s, {stage_edited}/{n} edited)"
          f"  ratio vs bare {bare_s / stage_s:.3f}")

    # 3. The same stage in a Ray Data actor pool (the actor builds its own editor).
    if args.no_ray:
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray pipeline     : skipped (ray not installed)")
        return
    del stage  # free the driver's copy before the actor builds its own
    if gpu:
        torch.cuda.empty_cache()
    wall, busy, ray_edited = ray_pipeline(BenchEditStage(config, full, args.layers), rows, args.batch)
    print(f"ray, in actor    : {n / busy:8.3f} images/s  ({busy:.2f}s inside the actor's stage calls, "
          f"{ray_edited}/{n} edited)  ratio vs bare {bare_s / busy:.3f}")
    print(f"ray, wall clock  : {n / wall:8.3f} images/s  ({wall:.2f}s incl. actor start + model build)"
          f"  ratio vs bare {bare_s / wall:.3f}")

if __name__ == "__main__":
    main()
