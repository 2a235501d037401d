"""A tiny random-weight CLIP (model, tokenizer, image processor) built from config.

The evaluation suite loads it exactly like a hub CLIP, with ``CLIPModel.from_pretrained(dir)`` and
``CLIPProcessor.from_pretrained(dir)``, so tests exercise the real transformers code paths without
downloading anything. The scores it gives are meaningless; only the plumbing is under test.
"""

from __future__ import annotations

import json
from pathlib import Path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE uses for the bytes 0..255.

    Printable Latin-1 bytes stand for themselves; the others are shifted past U+0100 so that no
    symbol is whitespace or a control character.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def _byte_level_vocab() -> dict[str, int]:
    """A character-level CLIP vocabulary: every byte symbol, alone and as a word end.

    With no merges, the BPE splits each word into characters and the last one carries ``</w>``,
    so any text tokenizes without unknown tokens.
    """
    symbols = list(_byte_symbols())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def build_tiny_clip(path: Path) -> None:
    """Save a tiny CLIP (32-wide, 2 layers, 32 px images) with its processor into ``path``."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _byte_level_vocab()
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)

    image_size = 32
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=8,
    )
    config = CLIPConfig(
        text_config=text_config.to_dict(), vision_config=vision_config.to_dict(), projection_dim=16
    )
    torch.manual_seed(0)  # the same tiny model on every machine
    model = CLIPModel(config).eval()
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
