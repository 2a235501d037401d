"""Stage 1 transformers-engine throughput: the project's ``TransformersEngine`` (real prompts,
grammar-constrained JSON) against a bare ``model.generate`` loop on the same inputs, in one run.
Prints images (or prompts)/s, tokens/s and the ratios engine / bare for the VLM (caption) and the
LLM (instruct).

Two model modes, neither downloads anything:

- ``--tiny`` (the default): the tiny random-weight Qwen2.5-VL and Qwen2 LLM of the ``tiny``
  profile (``tiny://qwen2_5_vl``, ``tiny://causal_lm``), with the tiny profile's text bounds.
- ``--full``: random-weight FULL-SIZE architectures built from config in memory, so a bare GPU
  machine gives real throughput (compute does not depend on the weights' values):
  Qwen2.5-VL-7B-Instruct (text 3584 wide, 28 layers, 28/4 heads, MLP 18944, vocab 152064; vision
  32 blocks 1280 wide, out 3584) and Qwen3-4B-Instruct-2507 (2560 wide, 36 layers, 32/8 heads,
  MLP 9728, vocab 151936, tied embeddings). The tokenizer is a byte-level BPE built in-process
  with a Qwen-sized vocabulary (~151.6k tokens: words of the prompts, then byte pairs and letter
  triples), so the grammar masks cover a real-sized vocabulary; prompts tokenize somewhat longer
  than with the real Qwen tokenizer (the ``prompt tok`` column says how long they were). The
  text bounds and token limits are the project defaults (``caption.max_new_tokens`` 1024,
  ``instruct.max_new_tokens`` 384, 400-character captions). ``--layers N`` caps every depth
  (text and vision), only for checking the shapes on a small machine. bfloat16 on CUDA.

Both paths decode with the same settings (greedy for caption, the instruct section's temperature
for instruct), the same stop ids, the same seed and the same ``max_new_tokens``; the bare loop
has no grammar. With random weights the two paths stop after different numbers of tokens (the
grammar closes the JSON, the free model rarely emits a stop token), so compare ``tok/s`` and
``step tok/s`` (batch x decode steps per second: the work the device did, padding included)
rather than items/s. A third row, ``matched``, reruns the bare loop with exactly the engine's
decode steps per batch (``min_new_tokens`` = ``max_new_tokens`` = the engine's): the same model
work, so ``engine/matched`` is the engine's own cost (grammar compile cache, per-token grammar
masks, result bookkeeping) at equal work.

Example (GPU): ``python benchmarks/stage1_throughput.py --full --images 32 --batch 8``.
CPU shape check: ``python benchmarks/stage1_throughput.py --full --layers 1 --images 2 --batch 2
--max-new-tokens 24 --max-image-side 224``. Needs torch, transformers, xgrammar, scikit-image.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from unsafe2safe_ray import records
from unsafe2safe_ray.config import load_config
from unsafe2safe_ray.engines.base import GenerationRequest, fit_image
from unsafe2safe_ray.engines.transformers_engine import TransformersEngine, _for_template
from unsafe2safe_ray.stages.caption import CaptionStage
from unsafe2safe_ray.stages.instruct import InstructStage

# skimage.data images: (loader name, dataset label, a public caption for the instruct LLM).
IMAGES = [
    ("astronaut", "person", "a person in a white space suit stands in front of a flag and a model "
                            "of a space shuttle, smiling at the camera"),
    ("coffee", "coffee cup", "a cup of coffee with foam on a saucer, a spoon beside it, on a "
                             "wooden table"),
    ("chelsea", "cat", "a tabby cat with green eyes lies on a blanket and looks to the side"),
    ("camera", "person", "a person in a dark coat stands on a lawn behind a camera on a tripod, "
                         "buildings in the distance"),
]

# The project defaults for the real models (config.py), for --full.
FULL_OVERRIDES = [
    "caption.max_image_side=768", "caption.max_new_tokens=1024", "caption.caption_chars=400",
    "caption.review_item_chars=160", "caption.max_review_items=5", "caption.temperature=0.0",
    "instruct.max_new_tokens=384", "instruct.temperature=0.7", "instruct.instruction_chars=360",
    "instruct.caption_chars=400", "instruct.combined_caption=true",
]


# -- random full-size architectures --------------------------------------------------------------

def _cap(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)


def wide_tokenizer(target: int = 151_665):
    """A byte-level BPE with the Qwen special tokens, chat template and about ``target`` tokens.

    Merge ranks: first the words of the project's prompts and captions (trained), then every
    byte pair, then letter triples until the vocabulary is full. No download, a few seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from unsafe2safe_ray import prompts
    from unsafe2safe_ray.tiny_models.text import _CHAT_TEMPLATE, _CORPUS, _SPECIAL_TOKENS

    corpus = list(_CORPUS) + [c for _, _, c in IMAGES]
    for name in ("inspect", "instruct", "criteria"):
        corpus += [json.dumps(v) if not isinstance(v, str) else v for v in prompts.load_prompt(name).blocks.values()]
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(corpus * 4, trainer=trainers.BpeTrainer(
        vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    limit = target - len(_SPECIAL_TOKENS)

    def add(a: str, b: str) -> None:
        if len(vocab) < limit and a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for a in alphabet:
        for b in alphabet:
            add(a, b)
    letters = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u0120"))
    for a in letters:
        for b in letters:
            for c in letters:
                add(a + b, c)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=_SPECIAL_TOKENS[1:], padding_side="left")
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def full_vl_config(tokenizer, cap: int | None):
    """Qwen/Qwen2.5-VL-7B-Instruct's config.json, special ids from ``tokenizer``."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    depth = _cap(32, cap)
    full_att = [i for i in (7, 15, 23, 31) if i < depth] or [depth - 1]
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=_cap(28, cap),
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
            rms_norm_eps=1e-6, rope_theta=1_000_000.0, hidden_act="silu", tie_word_embeddings=False,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=full_att, in_channels=3, hidden_act="silu"),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
    )


def full_lm_config(tokenizer, cap: int | None):
    """Qwen/Qwen3-4B-Instruct-2507's config.json, special ids from ``tokenizer``."""
    from transformers import Qwen3Config

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return Qwen3Config(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=_cap(36, cap),
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
        rms_norm_eps=1e-6, rope_theta=5_000_000.0, hidden_act="silu", tie_word_embeddings=True,
        bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)


def save_full_checkpoint(kind: str, path: Path, cap: int | None) -> None:
    """config.json and the tokenizer (and image processor) in ``path``, no weights: the engine
    reads them with ``from_pretrained`` exactly as it would a hub checkpoint."""
    from transformers import GenerationConfig

    tokenizer = wide_tokenizer()
    if kind == "vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        config = full_vl_config(tokenizer, cap)
        Qwen2_5_VLProcessor(
            image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
            video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer,
            chat_template=tokenizer.chat_template).save_pretrained(path)
    else:
        config = full_lm_config(tokenizer, cap)
        tokenizer.save_pretrained(path)
    config.save_pretrained(path)
    GenerationConfig(eos_token_id=config.get_text_config().eos_token_id,
                     pad_token_id=config.get_text_config().pad_token_id).save_pretrained(path)


@contextlib.contextmanager
def random_weights(device: str):
    """Within the block, ``AutoModel*.from_pretrained(dir)`` builds the config's architecture
    with random weights directly on ``device`` in the requested dtype (no weight files)."""
    import torch
    import transformers
    from transformers import AutoConfig, GenerationConfig

    def build(path, dtype=None, trust_remote_code=False, **_):
        config = AutoConfig.from_pretrained(path)
        cls = (transformers.Qwen2_5_VLForConditionalGeneration if hasattr(config, "vision_config")
               else transformers.Qwen3ForCausalLM)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype or torch.float32)
        try:
            # On the device in the target dtype: random init of 8B parameters is seconds on a
            # GPU and minutes (and 2x the memory) in float32 on the CPU.
            with torch.device(device):
                model = cls(config)
        finally:
            torch.set_default_dtype(previous)
        model.generation_config = GenerationConfig.from_pretrained(path)
        return model.eval()

    with mock.patch.object(transformers.AutoModelForImageTextToText, "from_pretrained", build), \
            mock.patch.object(transformers.AutoModelForCausalLM, "from_pretrained", build):
        yield


# -- the measurements ---------------------------------------------------------------------------

def load_images(n: int) -> list[tuple[np.ndarray, str, str]]:
    """``n`` skimage.data images (cycled) as HxWx3 uint8, with their label and public caption."""
    from skimage import data

    out = []
    for i in range(n):
        name, label, caption = IMAGES[i % len(IMAGES)]
        pixels = getattr(data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        out.append((np.ascontiguousarray(pixels[..., :3]).astype(np.uint8), label, caption))
    return out


def make_requests(stage, images, max_new_tokens: int | None, max_side: int | None) -> list[GenerationRequest]:
    """The stage's own requests (real prompts and schema) for every image."""
    reqs = []
    for i, (pixels, label, caption) in enumerate(images):
        key = f"{i:09d}"
        row = records.new_row(key, 0, f"mem://{key}", label, records.derive_seed(42, key))
        records.set_image(row, fit_image(pixels, max_side) if max_side else pixels)
        row.update(privacy_flag=True, public_caption=caption)
        messages, image, schema = stage.request(row)
        reqs.append(GenerationRequest(
            messages=messages, image=image if isinstance(stage, CaptionStage) else None,
            json_schema=schema, max_new_tokens=max_new_tokens or stage.section.max_new_tokens,
            temperature=stage.section.temperature))
    return reqs


def engine_loop(engine: TransformersEngine, reqs, batch: int) -> dict:
    """The engine over ``batch``-sized chunks: seconds, tokens, decode steps, finished answers."""
    start = time.perf_counter()
    tokens = steps = finished = 0
    chunk_steps = []
    for i in range(0, len(reqs), batch):
        results = engine.generate(reqs[i:i + batch])
        lengths = [r.meta["new_tokens"] + int(r.finished) for r in results]  # + the stop token
        tokens += sum(lengths)
        steps += max(lengths) * len(results)
        chunk_steps.append(max(lengths))
        finished += sum(r.finished for r in results)
    return dict(seconds=time.perf_counter() - start, tokens=tokens, step_tokens=steps, finished=finished,
                chunk_steps=chunk_steps)


def bare_loop(engine: TransformersEngine, reqs, batch: int, steps_per_chunk: list[int] | None = None) -> dict:
    """What a user would write: chat template, processor, ``model.generate``, decode; the same
    model, inputs, decoding settings and stop ids as the engine, no grammar. With
    ``steps_per_chunk`` every chunk decodes exactly that many steps (the engine's), so both
    paths do the same model work and the difference is the engine's own cost."""
    import torch
    from PIL import Image

    model, tok, proc = engine.model, engine.tokenizer, engine.processor
    known = len(tok)
    start = time.perf_counter()
    tokens = steps = finished = 0
    for k, i in enumerate(range(0, len(reqs), batch)):
        chunk = reqs[i:i + batch]
        owner = proc if proc is not None else tok
        texts = [owner.apply_chat_template(_for_template(r.messages, proc is not None), tokenize=False,
                                           add_generation_prompt=True) for r in chunk]
        if proc is not None:
            images = [Image.fromarray(fit_image(r.image, engine.max_image_side)) for r in chunk]
            inputs = proc(text=texts, images=images, return_tensors="pt", padding=True)
        else:
            inputs = tok(texts, return_tensors="pt", padding=True)
        inputs = inputs.to(engine.device)
        sampling = (dict(do_sample=True, temperature=chunk[0].temperature) if chunk[0].temperature > 0
                    else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
        length = dict(max_new_tokens=chunk[0].max_new_tokens)
        if steps_per_chunk is not None:
            length = dict(max_new_tokens=steps_per_chunk[k], min_new_tokens=steps_per_chunk[k])
        torch.manual_seed(engine.seed)
        with torch.inference_mode():
            out = model.generate(**inputs, **length, eos_token_id=engine.stop_ids,
                                 pad_token_id=tok.pad_token_id, **sampling)
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        for seq in new:
            stop = next((j for j, t in enumerate(seq) if t in engine.stop_ids), None)
            tokens += len(seq) if stop is None else stop + 1
            finished += stop is not None
        steps += len(new[0]) * len(new)
        # Ids past the tokenizer (the model's padded vocabulary) have no text.
        tok.batch_decode([[t for t in s if t < known] for s in new], skip_special_tokens=True)
    return dict(seconds=time.perf_counter() - start, tokens=tokens, step_tokens=steps, finished=finished)


def prompt_tokens(engine: TransformersEngine, reqs) -> tuple[float, float]:
    """Mean prompt tokens per request (image tokens included) and mean image tokens."""
    enc = engine._encode(reqs)
    lengths = enc["attention_mask"].sum(dim=1).float()
    image_id = getattr(engine.model.config, "image_token_id", None)
    image = (enc["input_ids"] == image_id).sum(dim=1).float() if image_id is not None else lengths * 0
    return float(lengths.mean()), float(image.mean())


def bench(title: str, engine: TransformersEngine, reqs, batch: int, warmup: bool) -> dict:
    import torch

    params = sum(p.numel() for p in engine.model.parameters()) / 1e6
    ptok, itok = prompt_tokens(engine, reqs[:batch])
    if warmup:
        # Kernels, allocator and the grammar compile (once per engine) out of the timings.
        short = [GenerationRequest(r.messages, r.image, r.json_schema, min(8, r.max_new_tokens), r.temperature)
                 for r in reqs[:batch]]
        engine_loop(engine, short, batch)
        bare_loop(engine, short, batch)
    sync = torch.cuda.synchronize if engine.device.startswith("cuda") else (lambda: None)
    sync()
    bare = bare_loop(engine, reqs, batch)
    sync()
    eng = engine_loop(engine, reqs, batch)
    sync()
    matched = bare_loop(engine, reqs, batch, eng["chunk_steps"])
    sync()
    return dict(title=title, params=params, prompt_tokens=ptok, image_tokens=itok, n=len(reqs),
                max_new_tokens=reqs[0].max_new_tokens, bare=bare, engine=eng, matched=matched)


def print_table(results: list[dict], unit: dict[str, str]) -> None:
    head = (f"{'model':<9} {'path':<7} {'items':>5} {'items/s':>9} {'tokens':>7} {'tok/s':>9} "
            f"{'step tok/s':>10} {'finished':>8} {'seconds':>8}")
    print(head)
    print("-" * len(head))
    for r in results:
        for path in ("bare", "engine", "matched"):
            m = r[path]
            s = m["seconds"]
            print(f"{r['title']:<9} {path:<7} {r['n']:>5} {r['n'] / s:>9.3f} {m['tokens']:>7} "
                  f"{m['tokens'] / s:>9.2f} {m['step_tokens'] / s:>10.2f} {m['finished']:>4}/{r['n']:<3} {s:>8.2f}")
    print()
    for r in results:
        b, e, m = r["bare"], r["engine"], r["matched"]
        def ratio(key: str, e=e, b=b) -> float:
            return (e[key] / e["seconds"]) / (b[key] / b["seconds"]) if b[key] else float("nan")

        print(f"{r['title']}: ratio engine/bare  {unit[r['title']]}/s {b['seconds'] / e['seconds']:.3f}  "
              f"tok/s {ratio('tokens'):.3f}  step tok/s {ratio('step_tokens'):.3f};  "
              f"engine/matched (same decode steps) {unit[r['title']]}/s {m['seconds'] / e['seconds']:.3f}")
        print(f"    [{r['params']:.0f}M params, prompt {r['prompt_tokens']:.0f} tok (image "
              f"{r['image_tokens']:.0f}), max_new_tokens {r['max_new_tokens']}, engine decode steps per batch "
              f"{e['chunk_steps']}]")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny local models (default)")
    mode.add_argument("--full", action="store_true", help="random full-size architectures")
    p.add_argument("--models", default="caption,instruct", help="comma list of caption, instruct")
    p.add_argument("--images", type=int, default=None, help="images/prompts per model (default 8 tiny, 16 full)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="override both sections' max_new_tokens (default: the sections' own)")
    p.add_argument("--max-image-side", type=int, default=None, help="default: caption.max_image_side")
    p.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--layers", type=int, default=None, help="cap every depth (shape checks only)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-warmup", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    full = args.full
    overrides = list(FULL_OVERRIDES) if full else []
    overrides += [f"caption.dtype={args.dtype}", f"instruct.dtype={args.dtype}"]
    if args.max_image_side:
        overrides.append(f"caption.max_image_side={args.max_image_side}")
    config = load_config("tiny", overrides=overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = args.images or (16 if full else 8)
    images = load_images(n)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"mode={'full-size random' if full else 'tiny'}{f' layers<={args.layers}' if args.layers else ''} "
          f"device={name} torch threads={torch.get_num_threads()} items={n} batch={args.batch} "
          f"max_image_side={config.caption.max_image_side}", flush=True)

    from unsafe2safe_ray.models import resolve_model_source

    results, unit = [], {"caption": "images", "instruct": "prompts"}
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        stage = CaptionStage(config) if which == "caption" else InstructStage(config)
        section = stage.section
        max_side = section.max_image_side if which == "caption" else None
        reqs = make_requests(stage, images, args.max_new_tokens, max_side)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="u2s-stage1-") as tmp:
            if full:
                save_full_checkpoint("vl" if which == "caption" else "lm", Path(tmp), args.layers)
                ctx, source = random_weights(device), tmp
            else:
                ctx = contextlib.nullcontext()
                source = resolve_model_source("tiny://qwen2_5_vl" if which == "caption" else "tiny://causal_lm")
            with ctx:
                engine = TransformersEngine(source, device=device, dtype=section.dtype, max_image_side=max_side,
                                            seed=config.seed)
        print(f"{which}: built in {time.perf_counter() - start:.1f}s, vocab {len(engine.tokenizer)} tokens / "
              f"{engine.vocab_size} logits", flush=True)
        results.append(bench(which, engine, reqs, args.batch, not args.no_warmup))
        del engine
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print()
    print_table(results, unit)


if __name__ == "__main__":
    main()
