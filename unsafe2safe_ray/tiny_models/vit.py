"""A tiny random-weight MAE ViT (``ViTMAEModel``) built from config, for the utility tests: it
loads like ``facebook/vit-mae-base`` through ``from_pretrained(dir)``."""

from __future__ import annotations

from pathlib import Path


def build_tiny_vit_mae(path: Path) -> None:
    """Save a 32-wide, 2-layer MAE encoder for 32 px images (8 px patches) into ``path``."""
    import torch
    from transformers import ViTMAEConfig, ViTMAEModel

    torch.manual_seed(0)
    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          image_size=32, patch_size=8, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=32)
    ViTMAEModel(config).save_pretrained(Path(path))
