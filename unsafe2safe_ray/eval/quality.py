"""Quality metrics with transformers CLIP: does the output still show what the caption says?

- ``clip_score``: 100 x cosine(image, public caption), clipped at 0 (the torchmetrics scale);
- ``clip_directional``: cosine between the image-embedding change (output - original) and the
  text-embedding change (edited caption - public caption), as in directional CLIP editing scores;
- ``clip_image_similarity``: cosine between the original and output image embeddings (the paper
  keeps training pairs above 0.7).
"""

from __future__ import annotations

import math

import numpy as np


class ClipScorer:
    """A CLIP model and processor loaded once (hub id, local folder, ``s3://``/``gs://`` prefix or
    ``tiny://name``: ``unsafe2safe_ray.models``)."""

    def __init__(self, source: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        from unsafe2safe_ray.models import resolve_model_source

        path = resolve_model_source(source)
        self.device = device
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    @staticmethod
    def _vectors(output) -> "np.ndarray":
        # transformers 5 returns a model output whose pooler_output is the projected embedding.
        tensor = output if hasattr(output, "shape") else output.pooler_output
        tensor = tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return tensor.float().cpu().numpy()

    def image_embeddings(self, images: list[np.ndarray]) -> np.ndarray:
        """Unit-length image embeddings, one row per image."""
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        with torch.no_grad():
            return self._vectors(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))

    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        """Unit-length text embeddings (texts truncated to CLIP's 77 tokens)."""
        import torch

        inputs = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            output = self.model.get_text_features(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device),
            )
        return self._vectors(output)

    def score_pairs(self, originals: list[np.ndarray], anonymized: list[np.ndarray],
                    public: list[str | None], edited: list[str | None]) -> list[dict]:
        """Quality fields per pair; caption-based values are NaN where the caption is missing."""
        orig_emb = self.image_embeddings(originals)
        anon_emb = self.image_embeddings(anonymized)
        texts = [t or "" for t in public] + [t or "" for t in edited]
        text_emb = self.text_embeddings(texts)
        n = len(originals)
        out = []
        for i in range(n):
            row = {"clip_image_similarity": float(orig_emb[i] @ anon_emb[i])}
            row["clip_score"] = 100.0 * max(0.0, float(anon_emb[i] @ text_emb[i])) if public[i] else math.nan
            if public[i] and edited[i] and edited[i] != public[i]:
                row["clip_directional"] = _cosine(anon_emb[i] - orig_emb[i], text_emb[n + i] - text_emb[i])
            else:
                row["clip_directional"] = math.nan
            out.append(row)
        return out


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na < 1e-9 or nb < 1e-9:
        return math.nan  # no change on one side: the direction is undefined
    return float(a @ b / (na * nb))
