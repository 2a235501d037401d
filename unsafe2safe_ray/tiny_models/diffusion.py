"""Tiny random-weight diffusers pipelines for the Stage 2 editors, built from config offline.

Each builder saves a complete pipeline folder with ``save_pretrained`` so that the real loading
path (``<Pipeline>.from_pretrained(dir)``) runs in tests and the ``tiny`` profile. The shapes follow
``/work/shared/tiny-pipelines.md``: every dimension rule of the full-size architectures holds, only
the widths are small. Tokenizers are made locally (a hand-written byte-level CLIP BPE and a
Unigram T5 trained in-process), so nothing touches the hub.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

# Words the tiny tokenizers know as whole tokens; anything else falls back to bytes (CLIP) or
# characters (T5), so every prompt still tokenizes.
_CORPUS = [
    "a photo of a person with a face and a name tag",
    "a man wearing a red jacket standing in the street",
    "a woman with short hair sitting at a desk in an office",
    "an old man with a grey beard and glasses",
    "a young woman with long curly hair and a blue shirt",
    "a license plate on a car parked near a house",
    "a sign with text on a wall next to a door",
    "replace the face with a different person",
    "change the hair color and the clothing",
    "make the text unreadable and remove the logo",
    "a cat sitting on a chair in a kitchen",
    "a cup of coffee on a wooden table",
    "an astronaut in a white suit holding a helmet",
    "a page of printed text from a book",
    "a group of friends at a party outside",
]
_T5_ALPHABET = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()")
# tiny-pipelines.md gotcha 1: CLIP padding length must be finite and <= max_position_embeddings.
_CLIP_MAX_LENGTH = 77
_LATENT_CHANNELS_SD3 = 16


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _write_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """A byte-level CLIP BPE: 256 bytes, 256 bytes+</w>, one left-to-right merge chain per corpus
    word, then the two special tokens last (gotcha: CLIP expects them at the end)."""
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    merges: list[str] = []
    words = sorted({w for line in _CORPUS for w in line.lower().split()})
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append(f"{left} {right}")
                vocab[merged] = len(vocab)
            left = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab, merges = _write_clip_vocab(Path(tmp))
        # transformers 5 ignores vocab_file=/merges_file= (gotcha 2): pass vocab=/merges=.
        return CLIPTokenizer(vocab=str(vocab), merges=str(merges), model_max_length=_CLIP_MAX_LENGTH)


def _t5_tokenizer(model_max_length: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    tk = Tokenizer(models.Unigram())
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    # Special-token order is load-bearing (gotcha 5): T5 reloads with unk_id=2 hard-coded.
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        initial_alphabet=_T5_ALPHABET, show_progress=False,
    )
    tk.train_from_iterator(_CORPUS, trainer=trainer)
    # extra_ids=0 keeps len(tok) under the tiny T5 vocab (gotcha 4).
    return T5TokenizerFast(tokenizer_object=tk, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tok, hidden_act: str, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    # Token ids copied from the tokenizer: CLIP pools at eos_token_id (gotcha 3).
    return CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=_CLIP_MAX_LENGTH, projection_dim=projection_dim,
        hidden_act=hidden_act, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel

    # 256 covers the Unigram trainer's 200-token ceiling: any text (random VLM captions included)
    # tokenizes to ids the embedding has.
    return T5EncoderModel(T5Config(
        vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    # Four blocks give vae_scale_factor 8, as in the real SD/SD3/FLUX VAEs.
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 16, 32, 32], layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=8, sample_size=128, **extra,
    )


def _seeded(seed: int) -> None:
    import torch

    # Fixed init, so a rebuilt tiny model has the same weights (stable test expectations).
    torch.manual_seed(seed)


def _save(pipe, path: Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(path), safe_serialization=True)


def build_tiny_instruct_pix2pix(path: Path) -> None:
    """A tiny ``StableDiffusionInstructPix2PixPipeline`` (8-channel UNet: noise + image latents)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    _seeded(0)
    tok = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
        norm_num_groups=8, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], cross_attention_dim=32, attention_head_dim=4,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=_vae(4), text_encoder=CLIPTextModel(_clip_text_config(tok, "quick_gelu")), tokenizer=tok, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    _save(pipe, path)


def build_tiny_sd3(path: Path) -> None:
    """A tiny ``StableDiffusion3Pipeline`` (MMDiT, 16-channel VAE, two CLIPs and a T5): the
    components FlowEdit runs on."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    _seeded(1)
    tok = _clip_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=_LATENT_CHANNELS_SD3, out_channels=_LATENT_CHANNELS_SD3,
        num_layers=2, attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        # CLIP hiddens 32+32 are zero-padded up to the T5 width 64; never below (gotcha 9).
        joint_attention_dim=64, pooled_projection_dim=64,
        # 64 covers latents up to 512 px (512/8/2 = 32 patches per side, times two for margin).
        pos_embed_max_size=64,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(_LATENT_CHANNELS_SD3, scaling_factor=1.5305, shift_factor=0.0609,
                 use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModelWithProjection(_clip_text_config(tok, "gelu")), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(tok, "gelu")), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_encoder(), tokenizer_3=_t5_tokenizer(256),
    )
    _save(pipe, path)


def build_tiny_flux_kontext(path: Path) -> None:
    """A tiny ``FluxKontextPipeline`` (2x2-packed 16-channel latents, CLIP pooled + T5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    _seeded(2)
    tok = _clip_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 16, out_channels=None, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=[4, 4, 8],
    )
    pipe = FluxKontextPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
            base_image_seq_len=256, max_image_seq_len=4096,
        ),
        vae=_vae(16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=CLIPTextModel(_clip_text_config(tok, "quick_gelu")), tokenizer=tok,
        text_encoder_2=_t5_encoder(), tokenizer_2=_t5_tokenizer(512),
    )
    _save(pipe, path)
