"""``unsafe2safe utility --mode mae-finetune``: the paper's utility classifier as a Ray Train job.

The paper measures utility with an MAE ViT-B/16 fine-tuned end to end on the anonymized training
set and tested on the untouched originals. This module does the same, beside the same classifier
trained on the raw training images, in one ``TorchTrainer`` job (both models train in turn on the
same workers):

- the encoder starts from an MAE checkpoint (``utility.mae_model``, a ``ViTMAEModel``; its
  weights load into a ``ViTModel`` of the same shape), with MAE's fine-tuning head: mean of the
  patch tokens, LayerNorm, linear;
- 224 px, RandomResizedCrop + horizontal flip + RandAugment on the training side; resize and
  centre crop on the test side; augmentation runs in Ray Data, anew every epoch;
- AdamW with layer-wise learning-rate decay, MAE's linear scaling of the base rate by the batch,
  warm-up then cosine decay, label smoothing 0.1.

The Unsafe2Safe paper does not print its optimizer settings, so the defaults (``utility:``
section) are MAE's published ViT-B fine-tuning recipe; mixup, cutmix and drop path are not
applied. The result names the mode and every setting, so it is never mistaken for the linear probe.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.stages import base as ray_adapter

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _augment(image: np.ndarray, size: int, train: bool, ops: int, magnitude: int) -> np.ndarray:
    """HxWx3 uint8 -> 3 x size x size float32, normalized."""
    import torch
    import torchvision.transforms.v2 as T

    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if train:
        steps = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
        if ops > 0:
            steps.append(T.RandAugment(num_ops=ops, magnitude=magnitude))
    else:
        steps = [T.Resize(int(round(size * 256 / 224)), antialias=True), T.CenterCrop(size)]
    t = T.Compose(steps)(t).float() / 255.0
    return ((t.permute(1, 2, 0).numpy() - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def _datasets(train: str, test: str, cfg, storage_options: dict | None):
    """(anonymized, raw, test) Ray Datasets of {pixels, label} and the class names."""
    import ray.data

    from unsafe2safe_ray.eval.images import load_rgb
    from unsafe2safe_ray.imaging import image_from_bytes
    from unsafe2safe_ray.output import open_output
    from unsafe2safe_ray.plan.listing import list_input

    reader = open_output(train, storage_options=storage_options)
    # Rows with an output image and a label train both classifiers (the same images).
    usable = [r for r in reader.captions().select(["key", "status", "label", "source_uri"]).to_pylist()
              if r["status"] in (records.EDITED, records.PASSED) and r["label"]]
    classes = sorted({r["label"] for r in usable})
    index = {c: i for i, c in enumerate(classes)}
    keys = {r["key"] for r in usable}
    listing = list_input(test, storage_options)
    test_rows = [{"uri": u, "label": index.get(label, -1)} for u, label in zip(listing.uris, listing.labels) if label]
    size, ops, magnitude = cfg.image_size, cfg.randaugment_ops, cfg.randaugment_magnitude

    def anonymized(row: dict) -> list[dict]:
        if row["image"] is None or row["key"] not in keys:
            return []
        label = index[json.loads(row["meta"])["label"]]
        return [{"pixels": _augment(image_from_bytes(row["image"]), size, True, ops, magnitude), "label": label}]

    def raw(row: dict) -> dict:
        return {"pixels": _augment(load_rgb(row["uri"], storage_options), size, True, ops, magnitude),
                "label": row["label"]}

    def test_map(row: dict) -> dict:
        return {"pixels": _augment(load_rgb(row["uri"], storage_options), size, False, 0, 0), "label": row["label"]}

    def items(rows: list[dict]):
        # About 64 images per block: enough tasks to spread, not one process start per image.
        return ray.data.from_items(rows, override_num_blocks=max(1, min(200, math.ceil(len(rows) / 64))))

    anon_ds = ray_adapter.flat_map(reader.dataset(), anonymized, name="mae_anonymized", num_cpus=0.25)
    raw_ds = items([{"uri": r["source_uri"], "label": index[r["label"]]} for r in usable]).map(raw, num_cpus=0.25)
    test_ds = items(test_rows).map(test_map, num_cpus=0.25)
    counts = {"train_images": len(usable), "train_images_dropped": len(reader.captions()) - len(usable),
              "test_images": len(test_rows), "test_images_unseen_label": sum(r["label"] < 0 for r in test_rows)}
    return anon_ds, raw_ds, test_ds, classes, counts


def build_classifier(mae_source: str, num_classes: int):
    """A ViT encoder with MAE's weights and a fresh mean-pool + LayerNorm + linear head."""
    import torch
    from transformers import ViTConfig, ViTMAEModel, ViTModel

    from unsafe2safe_ray.models import resolve_model_source

    mae = ViTMAEModel.from_pretrained(resolve_model_source(mae_source))
    c = mae.config
    vit = ViTModel(ViTConfig(hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                             num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                             hidden_act=c.hidden_act, image_size=c.image_size, patch_size=c.patch_size,
                             num_channels=c.num_channels, qkv_bias=c.qkv_bias, layer_norm_eps=c.layer_norm_eps),
                   add_pooling_layer=False)
    missing, unexpected = vit.load_state_dict(mae.state_dict(), strict=False)
    if unexpected or missing:
        raise ValueError(f"{mae_source}: MAE weights do not fit a ViT: missing {missing[:3]}, unexpected {unexpected[:3]}")

    class Classifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vit = vit
            self.fc_norm = torch.nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
            self.head = torch.nn.Linear(c.hidden_size, num_classes)
            torch.nn.init.trunc_normal_(self.head.weight, std=2e-5)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, pixels):
            tokens = self.vit(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
            return self.head(self.fc_norm(tokens[:, 1:].mean(dim=1)))

    return Classifier()


def _param_groups(model, weight_decay: float, layer_decay: float, lr: float) -> list[dict]:
    """Layer-wise decay: the head at ``lr``, each block below at ``layer_decay`` times the one
    above, embeddings lowest; no weight decay on biases, norms, tokens and position embeddings."""
    layers = model.vit.config.num_hidden_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("vit.embeddings"):
            depth = 0
        elif name.startswith("vit.encoder.layer."):
            depth = int(name.split(".")[3]) + 1
        else:
            depth = layers
        decay = p.ndim > 1 and "embeddings" not in name
        group = groups.setdefault((depth, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * layer_decay ** (layers - depth), "base_lr": lr * layer_decay ** (layers - depth)})
        group["params"].append(p)
    return list(groups.values())


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train the anonymized and the raw classifier in turn; report test accuracy of each."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.nn.functional as F

    cfg = config["utility"]
    device = ray.train.torch.get_device()
    ctx = ray.train.get_context()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    use_bf16 = cfg["bf16"] and device.type == "cuda"
    effective_batch = cfg["batch_size"] * cfg["gradient_accumulation"] * ctx.get_world_size()
    lr = cfg["base_learning_rate"] * effective_batch / 256
    steps_per_epoch = max(1, math.ceil(config["train_images"] / effective_batch))
    total, warmup = cfg["epochs"] * steps_per_epoch, cfg["warmup_epochs"] * steps_per_epoch
    metrics: dict[str, Any] = {}
    for name in ("anonymized", "raw"):
        torch.manual_seed(cfg["seed"])
        model = ray.train.torch.prepare_model(build_classifier(config["mae_model"], config["num_classes"]))
        inner = model.module if hasattr(model, "module") else model
        optimizer = torch.optim.AdamW(_param_groups(inner, cfg["weight_decay"], cfg["layer_decay"], lr),
                                      betas=(0.9, 0.999))
        shard = ray.train.get_dataset_shard(name)
        step, micro, losses = 0, 0, []
        for _epoch in range(cfg["epochs"]):
            model.train()
            for batch in shard.iter_torch_batches(batch_size=cfg["batch_size"], device=device):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logits = model(batch["pixels"])
                loss = F.cross_entropy(logits.float(), batch["label"].long(), label_smoothing=0.1)
                (loss / cfg["gradient_accumulation"]).backward()
                losses.append(float(loss))
                micro += 1
                if micro % cfg["gradient_accumulation"]:
                    continue
                # Warm-up, then cosine decay to zero, per optimizer step.
                scale = step / max(1, warmup) if step < warmup else \
                    0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * scale
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for batch in ray.train.get_dataset_shard("test").iter_torch_batches(batch_size=cfg["batch_size"],
                                                                                device=device):
                predicted = model(batch["pixels"]).argmax(dim=1)
                correct += int((predicted == batch["label"].long()).sum())
                seen += len(predicted)
        metrics[f"accuracy_{name}"] = correct / max(1, seen)
        metrics[f"train_loss_first_{name}"] = losses[0] if losses else None
        metrics[f"train_loss_last_{name}"] = losses[-1] if losses else None
        metrics[f"optimizer_steps_{name}"] = step
    metrics["learning_rate"] = lr
    # Ray Train keeps the metrics of reports that carry a checkpoint: the result is the checkpoint.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if ctx.get_world_rank() == 0:
            with open(os.path.join(folder, "metrics.json"), "w") as f:
                json.dump(metrics, f)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def run_mae_finetune(train: str, test: str, config, storage_options: dict | None = None,
                     storage_path: str | None = None) -> dict[str, Any]:
    """Accuracy on ``test`` (originals) of MAE classifiers fine-tuned on the anonymized output and
    on its raw originals. The result names the mode and its settings."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = config.utility
    storage_options = storage_options if storage_options is not None else dict(config.io.storage_options)
    start = time.perf_counter()
    anon_ds, raw_ds, test_ds, classes, counts = _datasets(train, test, cfg, storage_options)
    n_train, n_test = counts["train_images"], counts["test_images"]
    if n_train < cfg.num_workers or not n_test:
        raise ValueError(f"need labelled images on both sides: {n_train} train, {n_test} test")
    use_gpu = cfg.use_gpu if cfg.use_gpu is not None else ray.cluster_resources().get("GPU", 0) >= 1
    # Nothing to resume: the classifiers only yield a number, reported through a checkpoint in a
    # scratch folder (a multi-node cluster needs ``storage_path`` on storage every node reaches).
    storage = storage_path or tempfile.mkdtemp(prefix="u2s-mae-")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"utility": cfg.model_dump(), "mae_model": cfg.mae_model, "num_classes": len(classes),
                           "train_images": n_train},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(name="mae-finetune", storage_path=storage),
        datasets={"anonymized": anon_ds, "raw": raw_ds, "test": test_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["anonymized", "raw"]),
    )
    try:
        metrics = dict(trainer.fit().metrics or {})
    finally:
        if storage_path is None:
            shutil.rmtree(storage, ignore_errors=True)
    result: dict[str, Any] = {
        "mode": "mae-finetune",
        "recipe": "MAE ViT fine-tuning (He et al. 2022) defaults; the Unsafe2Safe paper's classifier protocol",
        "settings": cfg.model_dump(),
        "train": train, "test": test, "classes": classes, **counts,
        "accuracy_anonymized": metrics.get("accuracy_anonymized"), "accuracy_raw": metrics.get("accuracy_raw"),
        "learning_rate": metrics.get("learning_rate"),
        "optimizer_steps": metrics.get("optimizer_steps_anonymized"),
        "train_loss": {k: metrics.get(k) for k in metrics if k.startswith("train_loss_")},
    }
    gap = (result["accuracy_anonymized"] or 0.0) - (result["accuracy_raw"] or 0.0)
    result["accuracy_gap"] = gap
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
