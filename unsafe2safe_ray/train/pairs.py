"""Training pairs from committed job outputs: (original, edited, public caption, instruction).

Three steps, all streamed through Ray Data from ``open_output(...)``:

1. ``candidates``: every committed ``edited`` row with both texts, and its original found by
   ``source_uri`` (rebased from the job's input prefix onto ``--originals``). Rows the verifier
   did not pass cleanly are dropped here, with their reason.
2. ``score_pairs``: the CLIP ratio rule (the paper's filter): keep a pair when
   ``CLIP(edited, public caption) >= min_ratio x CLIP(original, private caption)``, scores on the
   100 x max(0, cosine) scale of ``eval.quality``. A Ray Data actor pool holds the CLIP model.
3. ``training_dataset``: the kept pairs as a Ray Dataset of square ``resolution`` crops, read tar
   by tar (each item carries only its own tar's rows), decoded on the fly every epoch.

Nothing here holds images in the driver; the decisions table (keys, scores, reasons, no text) is
what the driver keeps and writes beside the checkpoints.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, Iterator

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.stages import base as ray_adapter

# Why a pair was dropped (decision "reason"); "kept" for kept pairs.
KEPT = "kept"
NOT_EDITED = "not_edited"
NO_TEXT = "missing_caption_or_instruction"
NOT_VERIFIED = "not_verified"
LEAK = "leak"
CLASSIC_FALLBACK = "classic_fallback"
CLIP_RATIO = "clip_ratio"


def leak_reason(verification: dict | None) -> str | None:
    """None when the verifier ran and found no leak; else why the pair must not train.

    ``verification.ok`` must be true. A row that only passed after the classic fallback painted
    over a leak of the diffusion edit is dropped too: its pixels teach filling boxes, and the
    editor's own output leaked.
    """
    v = verification or {}
    if v.get("ok") is None or not v.get("verified", True):
        return NOT_VERIFIED
    if v.get("ok") is not True or v.get("leaks"):
        return LEAK
    if v.get("fallback"):
        return CLASSIC_FALLBACK
    return None


def clip_ratio_keeps(clip_edited: float, clip_original: float, min_ratio: float) -> bool:
    """The paper's rule: the edited image must keep ``min_ratio`` of the original's CLIP score
    (edited against the public caption, original against the private caption)."""
    if math.isnan(clip_edited) or math.isnan(clip_original):
        return False
    return clip_edited >= min_ratio * clip_original


def _local(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def original_uri(source_uri: str, job_input: str | None, originals: str) -> str:
    """Where the original of ``source_uri`` is now: under ``originals``, at the same place
    relative to the job's input prefix. Raises ``ValueError`` when it is under neither."""
    src, root = _local(source_uri), _local(originals).rstrip("/")
    if src == root or src.startswith(root + "/"):
        return source_uri
    if job_input:
        base = _local(job_input).rstrip("/")
        if src.startswith(base + "/"):
            return originals.rstrip("/") + src[len(base):]
    raise ValueError(f"original {source_uri} is neither under --originals {originals} nor under the job's "
                     f"input {job_input}")


def _job_input(reader) -> str | None:
    layout = reader.layout
    try:
        with layout.fs.open(layout.plan_json, "rb") as f:
            return json.loads(f.read()).get("input_uri")
    except FileNotFoundError:
        return None


def candidates(outputs: list[str], originals: str, storage_options: dict | None = None):
    """(readers, candidate rows, decisions for rows dropped before scoring).

    A candidate is ``{output, key, shard, image_tar, original_uri, public_caption,
    edit_instruction, private_caption}``; ``private_caption`` stays inside the cluster (it is
    only scored, never written).
    """
    from unsafe2safe_ray.output import open_output

    readers, rows, dropped = [], [], []
    for index, uri in enumerate(outputs):
        reader = open_output(uri, storage_options=storage_options)
        readers.append(reader)
        job_input = _job_input(reader)
        private = {r["key"]: r["private_caption"] for r in reader.private().select(["key", "private_caption"]).to_pylist()}
        for row in reader.captions().to_pylist():
            decision = {"output": index, "key": row["key"]}
            if row["status"] != records.EDITED or not row.get("image_tar"):
                dropped.append({**decision, "reason": NOT_EDITED})
                continue
            if not (row.get("public_caption") and row.get("edit_instruction")):
                dropped.append({**decision, "reason": NO_TEXT})
                continue
            reason = leak_reason(row.get("verification"))
            if reason is not None:
                dropped.append({**decision, "reason": reason})
                continue
            rows.append({**decision, "shard": row["shard"], "image_tar": row["image_tar"],
                         "original_uri": original_uri(row["source_uri"], job_input, originals),
                         "public_caption": row["public_caption"], "edit_instruction": row["edit_instruction"],
                         "private_caption": private.get(row["key"]) or ""})
    return readers, rows, dropped


def _tar_items(readers, rows: list[dict]) -> list[dict]:
    """One work item per (output, tar) with the rows that tar holds (as JSON)."""
    grouped: dict[tuple[int, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["output"], row["image_tar"]), []).append(row)
    items = []
    for (index, tar), tar_rows in sorted(grouped.items()):
        marker = readers[index].markers.get(tar_rows[0]["shard"]) or {}
        info = (marker.get("file_info") or {}).get(tar)
        items.append({"output": index, "tar": tar, "info": json.dumps(info), "rows": json.dumps(tar_rows)})
    return items


def _read_tar(readers, item: dict[str, Any]) -> Iterator[tuple[dict, bytes]]:
    """(row, encoded edited image) for each of the item's rows, streamed from its tar."""
    reader = readers[item["output"]]
    wanted = {r["key"]: r for r in json.loads(item["rows"])}
    for key, ext, data in reader.iter_tar(reader.layout.path(item["tar"]), json.loads(item["info"])):
        if ext != "json" and key in wanted:
            yield wanted[key], data


class ClipRatioScorer:
    """Ray Data actor: CLIP scores of (edited, public caption) and (original, private caption)."""

    def __init__(self, clip_model: str, min_ratio: float, storage_options: dict | None = None) -> None:
        import torch

        from unsafe2safe_ray.eval.quality import ClipScorer

        self.scorer = ClipScorer(clip_model, device="cuda" if torch.cuda.is_available() else "cpu")
        self.min_ratio = min_ratio
        self.storage_options = storage_options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from unsafe2safe_ray.eval.images import load_rgb
        from unsafe2safe_ray.imaging import image_from_bytes

        edited = [image_from_bytes(bytes(b)) for b in batch["edited"]]
        originals = [load_rgb(str(u), self.storage_options) for u in batch["original_uri"]]
        img = np.concatenate([self.scorer.image_embeddings(edited), self.scorer.image_embeddings(originals)])
        txt = self.scorer.text_embeddings([str(t) for t in batch["public_caption"]]
                                          + [str(t) for t in batch["private_caption"]])
        n = len(edited)
        score_e = [100.0 * max(0.0, float(img[i] @ txt[i])) for i in range(n)]
        score_o = [100.0 * max(0.0, float(img[n + i] @ txt[n + i])) for i in range(n)]
        keep = [clip_ratio_keeps(e, o, self.min_ratio) for e, o in zip(score_e, score_o)]
        return {"output": batch["output"], "key": batch["key"], "clip_edited": np.array(score_e),
                "clip_original": np.array(score_o),
                "reason": np.array([KEPT if k else CLIP_RATIO for k in keep], dtype=object)}


def score_pairs(readers, rows: list[dict], clip_model: str, min_ratio: float, *, batch_size: int = 16,
                num_gpus: float = 0.0, num_cpus: float = 1.0, storage_options: dict | None = None) -> list[dict]:
    """Decisions (output, key, clip_edited, clip_original, reason) for ``rows``, one Ray Data job."""
    import ray.data

    if not rows:
        return []

    def expand(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for row, data in _read_tar(readers, item):
            yield {"output": row["output"], "key": row["key"], "edited": data, "original_uri": row["original_uri"],
                   "public_caption": row["public_caption"], "private_caption": row["private_caption"]}

    ds = ray_adapter.flat_map(ray.data.from_items(_tar_items(readers, rows)), expand, name="read_pairs",
                              num_cpus=0.25)
    ds = ray_adapter.map_batches(
        ds, ClipRatioScorer, name="clip_ratio",
        resources=ray_adapter.Resources(num_cpus=num_cpus, num_gpus=num_gpus, batch_size=batch_size, pool_size=1,
                                        batch_format="numpy"),
        fn_constructor_kwargs={"clip_model": clip_model, "min_ratio": min_ratio, "storage_options": storage_options},
    )
    out = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["key"])):
            out.append({"output": int(batch["output"][i]), "key": str(batch["key"][i]),
                        "clip_edited": round(float(batch["clip_edited"][i]), 4),
                        "clip_original": round(float(batch["clip_original"][i]), 4),
                        "reason": str(batch["reason"][i])})
    return out


def square_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """Shorter side resized to ``resolution``, then the centre square (InstructPix2Pix's
    training shape)."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = resolution / min(h, w)
    nh, nw = max(resolution, round(h * scale)), max(resolution, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - resolution) // 2, (nw - resolution) // 2
    return np.ascontiguousarray(resized[top:top + resolution, left:left + resolution])


def training_dataset(readers, kept_rows: list[dict], resolution: int, storage_options: dict | None = None,
                     num_cpus: float = 0.25):
    """A Ray Dataset of kept pairs: ``original`` and ``edited`` (resolution² x 3 uint8, the same
    crop), ``instruction``, ``caption``. Lazily read: every epoch streams the tars again."""
    import ray.data

    from unsafe2safe_ray.eval.images import load_rgb
    from unsafe2safe_ray.imaging import image_from_bytes

    def expand(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for row, data in _read_tar(readers, item):
            edited = image_from_bytes(data)
            original = load_rgb(row["original_uri"], storage_options)
            yield {"original": square_crop(original, resolution), "edited": square_crop(edited, resolution),
                   "instruction": row["edit_instruction"], "caption": row["public_caption"]}

    return ray_adapter.flat_map(ray.data.from_items(_tar_items(readers, kept_rows)), expand, name="read_pairs",
                                num_cpus=num_cpus)


def summarize(decisions: list[dict]) -> dict[str, Any]:
    """Counts per reason and the kept share."""
    reasons = Counter(d["reason"] for d in decisions)
    return {"pairs_seen": len(decisions), "pairs_kept": reasons.get(KEPT, 0),
            "dropped": {k: v for k, v in sorted(reasons.items()) if k != KEPT}}
