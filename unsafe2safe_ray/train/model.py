"""The fine-tuned editor: an InstructPix2Pix UNet conditioned on two texts.

The UNet keeps its 8 input channels (noisy latents + the original image's latents). Its text
context is the edit instruction's token embeddings followed by the public caption's
(``encode_texts``); the conditioning mode decides how cross-attention reads them:

- ``fused`` (default, the paper's SafeAttention idea): every cross-attention layer attends to the
  instruction and to the caption separately (same query/key/value projections, two softmaxes) and
  adds the caption's output through a per-layer gate initialized at zero, so the fine-tune starts
  exactly at the base model;
- ``concat``: the stock cross-attention over both token sequences joined.

A saved editor is a complete diffusers pipeline folder plus ``u2s_finetune.json`` (conditioning,
step, base model) and, for ``fused``, ``fused_attention.safetensors`` (the gates). It loads with
``load_editor_pipeline`` as a ``TwoTextInstructPix2PixPipeline``, whose ``__call__`` takes the
caption next to the instruction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

MANIFEST = "u2s_finetune.json"
GATES_FILE = "fused_attention.safetensors"
CONDITIONINGS = ("fused", "concat")


class FusedContextProcessor(torch.nn.Module):
    """Cross-attention over two contexts (instruction tokens, then caption tokens, in equal
    halves of ``encoder_hidden_states``): ``attn(instruction) + gate * attn(caption)``.

    The gate is a learnable scalar per layer, zero at initialization.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = torch.nn.Parameter(torch.zeros(1))
        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] % 2:
            raise ValueError("fused conditioning needs instruction and caption embeddings of equal length joined")
        instruction, caption = encoder_hidden_states.chunk(2, dim=1)
        out = self.inner(attn, hidden_states, instruction, attention_mask, temb)
        return out + self.gate.to(out.dtype) * self.inner(attn, hidden_states, caption, attention_mask, temb)


def install_fused_attention(unet) -> None:
    """Give every cross-attention layer (``attn2``) of ``unet`` a ``FusedContextProcessor``."""
    processors = {name: (FusedContextProcessor() if name.endswith("attn2.processor") else proc)
                  for name, proc in unet.attn_processors.items()}
    unet.set_attn_processor(processors)


def fused_gates(unet) -> dict[str, torch.Tensor]:
    """{processor name: gate} of a UNet with fused attention ({} otherwise)."""
    return {name: proc.gate.detach().float().cpu().clone() for name, proc in unet.attn_processors.items()
            if isinstance(proc, FusedContextProcessor)}


def load_fused_gates(unet, gates: dict[str, torch.Tensor]) -> None:
    procs = unet.attn_processors
    missing = [name for name in gates if not isinstance(procs.get(name), FusedContextProcessor)]
    if missing:
        raise ValueError(f"checkpoint gates for {missing[:3]} do not match this UNet")
    with torch.no_grad():
        for name, value in gates.items():
            procs[name].gate.copy_(value.to(procs[name].gate.device))


def encode_texts(tokenizer, text_encoder, instructions: list[str], captions: list[str], device) -> torch.Tensor:
    """The two-text context: instruction token embeddings followed by the caption's, each padded
    to the tokenizer's full length (so the fused processor can split them in halves)."""

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids.to(device)
        return text_encoder(ids)[0]

    return torch.cat([encode(instructions), encode(captions)], dim=1)


class TwoTextInstructPix2PixPipeline(StableDiffusionInstructPix2PixPipeline):
    """InstructPix2Pix whose text context is (instruction, public caption): ``__call__`` takes
    ``caption`` next to ``prompt`` (the instruction) and otherwise behaves like the parent,
    three-way guidance included (the unconditional context is two empty texts)."""

    two_text = True

    def __call__(self, prompt=None, image=None, caption=None, **kwargs):
        """Edit ``image`` following ``prompt`` (instruction) towards ``caption`` (public caption)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        captions = [caption] * len(prompts) if caption is None or isinstance(caption, str) else list(caption)
        captions = [c or "" for c in captions]
        device = self._execution_device
        with torch.no_grad():
            embeds = encode_texts(self.tokenizer, self.text_encoder, prompts, captions, device)
            empty = encode_texts(self.tokenizer, self.text_encoder, [""] * len(prompts), [""] * len(prompts), device)
        return super().__call__(prompt=None, image=image, prompt_embeds=embeds.to(self.unet.dtype),
                                negative_prompt_embeds=empty.to(self.unet.dtype), **kwargs)


# -- loading and saving ----------------------------------------------------------------------


def is_finetuned_editor(source: str, storage_options: dict | None = None) -> bool:
    """Whether ``source`` (folder or fsspec URI) is an editor saved by ``unsafe2safe finetune``."""
    if source.startswith("tiny://"):
        return False
    if "://" not in source:
        return (Path(source).expanduser() / MANIFEST).is_file()
    import fsspec

    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    try:
        return fs.exists(path.rstrip("/") + "/" + MANIFEST)
    except Exception:  # noqa: BLE001 - an unreachable store is "not a checkpoint"; loading says why
        return False


def local_model_dir(source: str, storage_options: dict | None = None) -> str:
    """A local folder holding ``source`` (``unsafe2safe_ray.models.resolve_model_source``: local
    paths unchanged, ``tiny://`` built, fsspec URIs copied once per node)."""
    from unsafe2safe_ray.models import resolve_model_source

    return resolve_model_source(source, storage_options=storage_options)


def read_manifest(path: str) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def load_editor_pipeline(source: str, dtype=None, storage_options: dict | None = None):
    """A fine-tuned editor folder (or URI) -> ``TwoTextInstructPix2PixPipeline`` with its
    conditioning installed."""
    path = local_model_dir(source, storage_options)
    manifest = read_manifest(path)
    kwargs = {"safety_checker": None, "requires_safety_checker": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    pipe = TwoTextInstructPix2PixPipeline.from_pretrained(path, **kwargs)
    if manifest["conditioning"] == "fused":
        from safetensors.torch import load_file

        install_fused_attention(pipe.unet)
        load_fused_gates(pipe.unet, load_file(str(Path(path) / GATES_FILE)))
        if dtype is not None:
            pipe.unet.to(dtype)
    return pipe


def load_base_components(source: str, conditioning: str, storage_options: dict | None = None):
    """(pipeline, manifest or None) to start fine-tuning from: a stock InstructPix2Pix pipeline
    (hub id, folder, tiny://) or an earlier fine-tune (its conditioning must match)."""
    path = local_model_dir(source, storage_options)
    if (Path(path) / MANIFEST).is_file():
        manifest = read_manifest(path)
        if manifest["conditioning"] != conditioning:
            raise ValueError(f"{source} was fine-tuned with conditioning={manifest['conditioning']}, "
                             f"not {conditioning}")
        return load_editor_pipeline(path), manifest
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(path, safety_checker=None,
                                                                  requires_safety_checker=False)
    if pipe.unet.config.in_channels != 8:
        raise ValueError(f"{source}: the UNet has {pipe.unet.config.in_channels} input channels; "
                         "an InstructPix2Pix UNet has 8")
    if conditioning == "fused":
        install_fused_attention(pipe.unet)
    return pipe, None


def save_editor(folder: str | Path, pipe, unet, manifest: dict[str, Any]) -> None:
    """Write a loadable editor: the pipeline's components with ``unet`` in place of its own."""
    from diffusers import EulerAncestralDiscreteScheduler
    from safetensors.torch import save_file

    folder = Path(folder)
    gates = fused_gates(unet)
    processors = unet.attn_processors
    if gates:
        unet.set_attn_processor(AttnProcessor2_0())  # the folder's UNet loads as a stock UNet
    try:
        out = TwoTextInstructPix2PixPipeline(
            vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
            scheduler=EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        out.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if gates:
            unet.set_attn_processor(processors)
    if gates:
        save_file({k: v.contiguous() for k, v in gates.items()}, str(folder / GATES_FILE))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
