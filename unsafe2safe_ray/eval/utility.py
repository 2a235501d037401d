"""Utility: train on the anonymized training set, test on the untouched original test set.

As in the paper, the anonymized outputs replace the training images and the classifier is
tested on originals; the same classifier trained on the raw training images is the reference.

- ``linear`` (default): frozen features extracted as a Ray Data job (actor pool), then a
  multinomial logistic regression on the driver;
- ``finetune``: the whole image tower plus a linear head trained in one Ray task.
- ``mae-finetune`` (the paper's protocol, ``unsafe2safe_ray.train.mae``): an MAE ViT-B/16
  fine-tuned end to end as a Ray Train job. The two modes above are proxies, and say so.

Feature sources: ``clip:<model>`` (CLIP image tower; hub id, local dir or ``tiny://clip``) or
``pixels`` (a weight-free colour thumbnail + histogram, for offline smoke runs).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from unsafe2safe_ray import records


def _image_rows_from_output(uri: str, storage_options: dict | None) -> tuple[list[dict], list[dict], int]:
    """(anonymized rows, raw rows, dropped) of a pipeline output; rows without an output image or
    a label are dropped from both, so both classifiers see the same images."""
    from unsafe2safe_ray.output import open_output

    anonymized, raw, dropped = [], [], 0
    for sample in open_output(uri, storage_options=storage_options).iter_samples():
        caption = sample["caption"]
        if sample["image"] is None or caption.get("status") == records.FAILED or not caption.get("label"):
            dropped += 1
            continue
        image = sample["image"]
        anonymized.append({"label": caption["label"], "pixels": image.tobytes(),
                           "height": image.shape[0], "width": image.shape[1], "uri": None})
        raw.append({"label": caption["label"], "pixels": None, "height": None, "width": None,
                    "uri": caption["source_uri"]})
    return anonymized, raw, dropped


def _image_rows_from_input(uri: str, storage_options: dict | None) -> list[dict]:
    """Rows of an input listing (folder labels or a manifest's label column)."""
    from unsafe2safe_ray.plan.listing import list_input

    listing = list_input(uri, storage_options)
    return [{"label": label, "pixels": None, "height": None, "width": None, "uri": u}
            for u, label in zip(listing.uris, listing.labels) if label]


def _decode(row: dict, storage_options: dict | None) -> np.ndarray:
    from unsafe2safe_ray.eval.images import load_rgb

    if row.get("pixels") is not None:
        return np.frombuffer(row["pixels"], dtype=np.uint8).reshape(int(row["height"]), int(row["width"]), 3)
    return load_rgb(row["uri"], storage_options)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """A weight-free descriptor: an 8x8 colour thumbnail plus an 8-bin histogram per channel."""
    from PIL import Image

    thumb = np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR), dtype=np.float32).ravel() / 255.0
    hist = np.concatenate([np.histogram(image[:, :, c], bins=8, range=(0, 256))[0] for c in range(3)])
    return np.concatenate([thumb, hist / max(1, image.shape[0] * image.shape[1])]).astype(np.float32)


class FeatureExtractor:
    """Ray Data actor: images -> frozen feature vectors."""

    def __init__(self, features: str, storage_options: dict | None = None) -> None:
        self.features = features
        self.storage_options = storage_options
        self.clip = None
        if features.startswith("clip:"):
            from unsafe2safe_ray.eval.quality import ClipScorer

            self.clip = ClipScorer(features[len("clip:"):])
        elif features != "pixels":
            raise ValueError(f"unknown feature source {features!r}; use clip:<model> or pixels")

    def __call__(self, batch):
        import pyarrow as pa

        rows = batch.to_pylist()  # Arrow keeps None as None (numpy batches turn it into NaN)
        images = [_decode(row, self.storage_options) for row in rows]
        if self.clip is not None:
            vectors = list(self.clip.image_embeddings(images))
        else:
            vectors = [pixel_features(image) for image in images]
        return pa.table({"split": [row["split"] for row in rows], "label": [row["label"] for row in rows],
                         "features": [np.asarray(v, dtype=np.float32).tolist() for v in vectors]})


def extract_features(splits: dict[str, list[dict]], features: str, storage_options: dict | None = None,
                     pool_size: int = 1, batch_size: int = 8) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Feature matrix and labels per split, all splits in one Ray Data job (one model load)."""
    import ray

    rows = [dict(row, split=name) for name, split_rows in splits.items() for row in split_rows]
    from unsafe2safe_ray.stages.base import Resources, map_batches

    ds = map_batches(ray.data.from_items(rows), FeatureExtractor, name="utility_features",
                     resources=Resources(num_cpus=1, batch_size=batch_size, pool_size=pool_size),
                     fn_constructor_kwargs={"features": features, "storage_options": storage_options})
    grouped: dict[str, tuple[list, list]] = {name: ([], []) for name in splits}
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for row in batch.to_pylist():
            grouped[row["split"]][0].append(np.asarray(row["features"], dtype=np.float32))
            grouped[row["split"]][1].append(str(row["label"]))
    return {name: (np.stack(x), y) for name, (x, y) in grouped.items()}


def train_linear_probe(x: np.ndarray, y: np.ndarray, classes: int, epochs: int = 300, seed: int = 0):
    """A multinomial logistic regression on standardized features (full-batch L-BFGS).

    Returns a function mapping a feature matrix to predicted class indices.
    """
    import torch

    torch.manual_seed(seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y).long()
    layer = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=epochs)
    weight_decay = 1e-3  # keeps the probe finite on separable data

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(xt), yt) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def predict(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return layer(torch.from_numpy((features - mean) / std)).argmax(dim=1).numpy()

    return predict


def _finetune_accuracy(train_rows: list[dict], test_rows: list[dict], model: str, classes: list[str],
                       epochs: int, lr: float, storage_options: dict | None) -> float:
    """Fine-tune the CLIP image tower with a linear head; accuracy on ``test_rows``."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from unsafe2safe_ray.models import resolve_model_source

    torch.manual_seed(0)
    path = resolve_model_source(model, storage_options=storage_options)
    clip = CLIPModel.from_pretrained(path)
    processor = CLIPProcessor.from_pretrained(path)
    tower, projection = clip.vision_model, clip.visual_projection
    head = torch.nn.Linear(projection.out_features, len(classes))
    params = [*tower.parameters(), *projection.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr)
    index = {c: i for i, c in enumerate(classes)}

    def logits(images):
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return head(projection(tower(pixel_values=pixels).pooler_output))

    train_images = [_decode(r, storage_options) for r in train_rows]
    labels = torch.tensor([index[r["label"]] for r in train_rows])
    tower.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_images))
        for start in range(0, len(order), 8):
            chosen = order[start:start + 8].tolist()
            loss = torch.nn.functional.cross_entropy(logits([train_images[i] for i in chosen]), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    tower.eval()
    correct = 0
    with torch.no_grad():
        for r in test_rows:
            predicted = int(logits([_decode(r, storage_options)]).argmax(dim=1)[0])
            correct += classes[predicted] == r["label"]
    return correct / len(test_rows)


def run_utility(train: str, test: str, features: str = "clip:openai/clip-vit-large-patch14",
                mode: str = "linear", epochs: int = 3, lr: float = 1e-5,
                storage_options: dict | None = None, pool_size: int = 1) -> dict[str, Any]:
    """Accuracy on the original test set of the classifier trained on the anonymized training set
    (``accuracy_anonymized``) and of the same classifier trained on the raw training images
    (``accuracy_raw``)."""
    start = time.perf_counter()
    # 1. Training rows: the output's images and, for the reference, their originals.
    anonymized_rows, raw_rows, dropped = _image_rows_from_output(train, storage_options)
    test_rows = _image_rows_from_input(test, storage_options)
    if not anonymized_rows or not test_rows:
        raise ValueError(f"need labelled images on both sides: {len(anonymized_rows)} train, {len(test_rows)} test")
    classes = sorted({r["label"] for r in anonymized_rows})
    result: dict[str, Any] = {
        "mode": mode, "features": features, "train": train, "test": test, "classes": classes,
        # Never the paper's number: that is `--mode mae-finetune` (unsafe2safe_ray.train.mae).
        "protocol": f"proxy ({mode} on {features}), not the paper's MAE ViT-B/16 fine-tune",
        "settings": {"epochs": epochs, "lr": lr} if mode == "finetune" else {},
        "train_images": len(anonymized_rows), "train_images_dropped": dropped, "test_images": len(test_rows),
        "test_images_unseen_label": sum(1 for r in test_rows if r["label"] not in classes),
    }
    if mode == "linear":
        # 2. Frozen features for the three sets in one Ray Data job.
        index = {c: i for i, c in enumerate(classes)}
        extracted = extract_features({"anonymized": anonymized_rows, "raw": raw_rows, "test": test_rows},
                                     features, storage_options, pool_size)
        x_test, y_test = extracted["test"]
        for name in ("anonymized", "raw"):
            x_train, y_train = extracted[name]
            # 3. Probe; test labels never seen in training count as errors.
            predict = train_linear_probe(x_train, np.array([index[y] for y in y_train]), len(classes))
            predicted = [classes[i] for i in predict(x_test)]
            result[f"accuracy_{name}"] = float(np.mean([p == y for p, y in zip(predicted, y_test)]))
    elif mode == "finetune":
        import ray

        if not features.startswith("clip:"):
            raise ValueError("finetune needs clip:<model> features")
        remote = ray.remote(num_cpus=1)(_finetune_accuracy)
        refs = {name: remote.remote(rows, test_rows, features[len("clip:"):], classes, epochs, lr, storage_options)
                for name, rows in (("anonymized", anonymized_rows), ("raw", raw_rows))}
        result.update({f"accuracy_{name}": ray.get(ref) for name, ref in refs.items()})
    else:
        raise ValueError(f"unknown utility mode {mode!r}; use linear or finetune (or mae-finetune: "
                         "unsafe2safe_ray.train.mae.run_mae_finetune)")
    gap = result["accuracy_anonymized"] - result["accuracy_raw"]
    result["accuracy_gap"] = gap if not math.isnan(gap) else None
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
