"""``unsafe2safe finetune``: the editor fine-tune as a Ray Train ``TorchTrainer`` job.

Driver steps (``run_finetune``):

1. Pairs: candidates from the outputs' captions tables, then the CLIP ratio filter (one Ray Data
   job), unless ``OUT/pairs.json`` already holds the decisions for the same inputs and filter.
2. Train: a ``TorchTrainer`` (DDP over ``finetune.num_workers`` workers; GPUs when present) fed
   by the kept pairs as a streamed Ray Dataset. Ray Train writes checkpoints under ``OUT`` (any
   fsspec URI); a job started again with the same ``--out`` resumes from the last checkpoint and
   its step count and trains until ``finetune.steps``.
3. ``OUT/latest.json`` names the last checkpoint: a folder that loads as an editor
   (``--set edit.editor=instruct-pix2pix --set edit.instruct_pix2pix_model=<it>``).

The worker loop follows InstructPix2Pix training: the edited image's latents are noised, the
UNet sees them beside the original's latents (8 channels) and the two-text context, and learns
to predict the noise; texts, the input image or both are dropped for classifier-free guidance.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from typing import Any

from unsafe2safe_ray.train import pairs as pairs_mod

TRAINING_STATE = "training_state.pt"


# -- the worker ------------------------------------------------------------------------------


class _Ema:
    """Exponential moving average of the trainable parameters (float32 shadow copies)."""

    def __init__(self, params, decay: float) -> None:
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    def update(self, params) -> None:
        for s, p in zip(self.shadow, params):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    def swap(self, params) -> None:
        """Exchange the live weights and the averages (call twice to undo)."""
        import torch

        with torch.no_grad():
            for s, p in zip(self.shadow, params):
                live = p.detach().float().clone()
                p.copy_(s.to(p.dtype))
                s.copy_(live)


def _to_pixels(array, device, dtype):
    """uint8 B x H x W x 3 (numpy) -> float B x 3 x H x W in [-1, 1]."""
    import torch

    t = torch.as_tensor(array).to(device).permute(0, 3, 1, 2).float()
    return (t / 127.5 - 1.0).to(dtype)


class _Step:
    """One loss evaluation of the InstructPix2Pix objective (shared by training and the fixed
    probe loss)."""

    def __init__(self, pipe, noise_scheduler, cfg, device, weight_dtype) -> None:
        import torch

        from unsafe2safe_ray.train.model import encode_texts

        self.pipe, self.noise_scheduler, self.cfg = pipe, noise_scheduler, cfg
        self.device, self.weight_dtype = device, weight_dtype
        with torch.no_grad():
            self.null = encode_texts(pipe.tokenizer, pipe.text_encoder, [""], [""], device)

    def loss(self, model, batch: dict, generator, dropout: bool):
        import torch
        import torch.nn.functional as F

        from unsafe2safe_ray.train.model import encode_texts

        cfg, pipe, device = self.cfg, self.pipe, self.device
        original = _to_pixels(batch["original"], device, self.weight_dtype)
        edited = _to_pixels(batch["edited"], device, self.weight_dtype)
        n = edited.shape[0]
        if dropout and cfg["random_flip"]:
            flip = torch.rand(n, generator=generator, device=device) < 0.5
            original = torch.where(flip[:, None, None, None], original.flip(-1), original)
            edited = torch.where(flip[:, None, None, None], edited.flip(-1), edited)
        with torch.no_grad():
            latents = pipe.vae.encode(edited).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
            image_latents = pipe.vae.encode(original).latent_dist.mode()
            context = encode_texts(pipe.tokenizer, pipe.text_encoder, [str(t) for t in batch["instruction"]],
                                   [str(t) for t in batch["caption"]], device)
        latents, image_latents = latents.float(), image_latents.float()
        noise = torch.randn(latents.shape, generator=generator, device=device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (n,), generator=generator, device=device).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if dropout:
            # Classifier-free guidance dropout: [0, both) loses texts and image, then text only,
            # then image only.
            p = torch.rand(n, generator=generator, device=device)
            both, text, image = cfg["both_dropout"], cfg["text_dropout"], cfg["image_dropout"]
            drop_text = p < both + text
            drop_image = (p < both) | ((p >= both + text) & (p < both + text + image))
            context = torch.where(drop_text[:, None, None], self.null.to(context.dtype), context)
            image_latents = image_latents * (~drop_image).float()[:, None, None, None]
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.weight_dtype == torch.bfloat16)
        with autocast:
            pred = model(torch.cat([noisy, image_latents], dim=1), timesteps,
                         encoder_hidden_states=context.to(self.weight_dtype)).sample
        return F.mse_loss(pred.float(), target.float())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: load the base (or the last checkpoint), train to ``steps``, report a
    checkpoint every ``checkpoint_every`` steps and at the end."""
    import ray.train
    import ray.train.torch
    import torch
    from diffusers import DDPMScheduler

    from unsafe2safe_ray.editors.base import quiet_diffusers
    from unsafe2safe_ray.train.model import load_base_components, load_fused_gates, save_editor, GATES_FILE

    quiet_diffusers()
    cfg = config["finetune"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    weight_dtype = torch.bfloat16 if cfg["bf16"] and device.type == "cuda" else torch.float32

    # 1. Base pipeline, fused attention installed when configured.
    pipe, _ = load_base_components(config["base_model"], cfg["conditioning"], config.get("storage_options"))
    unet = pipe.unet
    pipe.vae.requires_grad_(False).to(device, weight_dtype).eval()
    pipe.text_encoder.requires_grad_(False).to(device, weight_dtype).eval()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # 2. Resume: weights, optimizer, EMA and the step count of the last checkpoint.
    step, state = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, TRAINING_STATE), map_location="cpu", weights_only=False)
            if state.get("unet") is not None:
                unet.load_state_dict(state["unet"])
            else:
                from safetensors.torch import load_file

                weights = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
                missing, unexpected = unet.load_state_dict(weights, strict=False)
                if unexpected or any(not k.endswith("processor.gate") for k in missing):
                    raise ValueError(f"checkpoint UNet does not match: {missing[:3]} {unexpected[:3]}")
                if os.path.exists(os.path.join(folder, GATES_FILE)):
                    load_fused_gates(unet, load_file(os.path.join(folder, GATES_FILE)))
        step = int(state["step"])
    resumed_from = step
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    ema = _Ema(params, cfg["ema_decay"]) if cfg["ema"] else None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.shadow = [s.to(device) for s in state["ema"]]
    model = ray.train.torch.prepare_model(unet)
    if ema is not None:
        ema.shadow = [s.to(device) for s in ema.shadow]
    objective = _Step(pipe, noise_scheduler, cfg, device, weight_dtype)

    def generator(tag: int):
        return torch.Generator(device=device).manual_seed(cfg["seed"] * 1_000_003 + tag * 1009 + rank)

    def save_and_report(metrics: dict) -> None:
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            if ema is not None:
                ema.swap(params)  # the editor folder holds the averaged weights
            try:
                save_editor(folder, pipe, unet, {
                    "conditioning": cfg["conditioning"], "step": step, "base_model": config["base_model"],
                    "resolution": cfg["resolution"], "ema": bool(ema), "format": 1,
                })
            finally:
                if ema is not None:
                    ema.swap(params)
            torch.save({"step": step, "optimizer": optimizer.state_dict(),
                        "ema": [s.cpu() for s in ema.shadow] if ema is not None else None,
                        "unet": unet.state_dict() if ema is not None else None},
                       os.path.join(folder, TRAINING_STATE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    # 3. Train to ``steps`` optimizer steps, streaming the pairs epoch after epoch.
    shard = ray.train.get_dataset_shard("train")
    accumulation = cfg["gradient_accumulation"]
    probe, probe_start = None, None
    losses: list[float] = []
    micro = 0
    started = time.perf_counter()
    while step < cfg["steps"]:
        seen = 0
        for batch in shard.iter_batches(batch_size=cfg["batch_size"], batch_format="numpy",
                                        local_shuffle_buffer_size=cfg["shuffle_buffer"] or None,
                                        local_shuffle_seed=cfg["seed"] + step):
            seen += 1
            if probe is None:
                # A fixed batch with fixed noise: its loss is comparable across steps and runs.
                probe = {k: v.copy() for k, v in batch.items()}
                with torch.no_grad():
                    probe_start = float(objective.loss(model, probe, generator(-1), dropout=False))
            micro += 1
            sync = micro % accumulation == 0
            no_sync = model.no_sync if (not sync and hasattr(model, "no_sync")) else contextlib.nullcontext
            with no_sync():
                loss = objective.loss(model, batch, generator(step * accumulation + micro), dropout=True)
                (loss / accumulation).backward()
            losses.append(float(loss))
            if not sync:
                continue
            torch.nn.utils.clip_grad_norm_(params, cfg["max_grad_norm"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(params)
            step += 1
            if step % cfg["checkpoint_every"] == 0 or step >= cfg["steps"]:
                with torch.no_grad():
                    probe_now = float(objective.loss(model, probe, generator(-1), dropout=False))
                save_and_report({"step": step, "loss": sum(losses) / len(losses), "loss_fixed": probe_now,
                                 "loss_fixed_start": probe_start, "world_size": world,
                                 "resumed_from_step": resumed_from, "steps_this_run": step - resumed_from,
                                 "seconds": round(time.perf_counter() - started, 2)})
                losses = []
            if step >= cfg["steps"]:
                break
        if seen == 0:
            raise ValueError("no training pairs reached this worker (the pair filter kept none, or fewer "
                             "pairs than workers)")


# -- the driver ------------------------------------------------------------------------------


def _storage(out: str, storage_options: dict | None):
    """(storage_path, name, pyarrow filesystem or None) for Ray Train's RunConfig."""
    import fsspec
    import posixpath

    fs, path = fsspec.core.url_to_fs(out, **(storage_options or {}))
    path = path.rstrip("/")
    parent, name = posixpath.dirname(path), posixpath.basename(path)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return os.path.abspath(parent), name, None, fs, path
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return parent, name, PyFileSystem(FSSpecHandler(fs)), fs, path


def _decisions(readers, rows, dropped, cfg, fs, root: str, key: dict, storage_options) -> list[dict]:
    """The pair decisions: reused from ``OUT/pairs.json`` when it was made for the same inputs
    and filter, else computed (CLIP ratio, one Ray Data job) and written there."""
    path = f"{root}/pairs.json"
    if fs.exists(path):
        with fs.open(path, "r") as f:
            saved = json.load(f)
        if saved.get("inputs") == key:
            return saved["decisions"]
    scored = pairs_mod.score_pairs(readers, rows, cfg.clip_model, cfg.min_clip_ratio,
                                   batch_size=cfg.filter_batch_size, num_gpus=cfg.filter_num_gpus,
                                   num_cpus=0.5 if cfg.filter_num_gpus == 0 else 1.0,
                                   storage_options=storage_options)
    decisions = sorted(dropped + scored, key=lambda d: (d["output"], d["key"]))
    fs.makedirs(root, exist_ok=True)
    with fs.open(path, "w") as f:
        json.dump({"inputs": key, "summary": pairs_mod.summarize(decisions), "decisions": decisions}, f)
    return decisions


def run_finetune(data: list[str], originals: str, out: str, config, storage_options: dict | None = None) -> dict:
    """Fine-tune the editor on the pairs of ``data`` (job outputs) with ``config.finetune``;
    checkpoints under ``out``. Returns the summary (also in ``OUT/latest.json``)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = config.finetune
    storage_options = storage_options if storage_options is not None else dict(config.io.storage_options)
    storage_path, name, pa_fs, fs, root = _storage(out, storage_options)
    started = time.perf_counter()

    # 1. Pairs.
    readers, rows, dropped = pairs_mod.candidates(data, originals, storage_options)
    key = {"data": list(data), "originals": originals, "clip_model": cfg.clip_model,
           "min_clip_ratio": cfg.min_clip_ratio, "commits": [sorted(r.shards) for r in readers]}
    decisions = _decisions(readers, rows, dropped, cfg, fs, root, key, storage_options)
    kept_keys = {(d["output"], d["key"]) for d in decisions if d["reason"] == pairs_mod.KEPT}
    kept = [r for r in rows if (r["output"], r["key"]) in kept_keys]
    summary = pairs_mod.summarize(decisions)
    if len(kept) < cfg.num_workers:
        raise ValueError(f"the pair filter kept {len(kept)} pair(s) for {cfg.num_workers} worker(s): "
                         f"{summary['dropped']}")
    dataset = pairs_mod.training_dataset(readers, kept, cfg.resolution, storage_options)

    # 2. Train (resumes from the last checkpoint under ``out``).
    use_gpu = cfg.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"finetune": cfg.model_dump(), "base_model": cfg.base_model,
                           "storage_options": storage_options},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=pa_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    # 3. Where the editor is.
    ckpt_uri = fs.unstrip_protocol(checkpoint.path) if pa_fs is not None else checkpoint.path
    metrics = dict(result.metrics or {})
    latest = {"checkpoint": ckpt_uri, "step": metrics.get("step"), "metrics": metrics, "pairs": summary,
              "conditioning": cfg.conditioning, "base_model": cfg.base_model, "resolution": cfg.resolution,
              "seconds": round(time.perf_counter() - started, 2),
              "use_as_editor": ["--set", "edit.editor=instruct-pix2pix", "--set",
                                f"edit.instruct_pix2pix_model={ckpt_uri}"]}
    with fs.open(f"{root}/latest.json", "w") as f:
        json.dump(latest, f, indent=2, default=str)
    return latest
