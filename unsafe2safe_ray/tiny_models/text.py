"""Tiny random-weight Stage 1 models: a Qwen2.5-VL and a Qwen2 text LLM.

Both are built from config with a byte-level BPE tokenizer trained in-process, saved with
``save_pretrained`` and loaded back by the real engine with ``from_pretrained(dir)``, so tests run
the same code path as a hub checkpoint without any download. Building one takes about a second.
"""

from __future__ import annotations

from pathlib import Path

# Special tokens in the order the Qwen family uses them; ids follow the trained vocabulary.
_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# A small Qwen-style chat template: string or list content, images as vision placeholders.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or part['type'] == 'image_url' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text: JSON punctuation, prompt words and caption words, so the 400-token vocabulary
# covers what the constrained decoder has to spell.
_CORPUS = [
    '{"privacy_flag": true, "categories": ["people", "text_and_symbols"], "privacy_review": '
    '["a face is visible: it identifies a person"], "private_caption": "a woman at a desk", '
    '"public_caption": "a person sits at a desk", "edit_instruction": "change the hair", '
    '"combined_caption": "a person with short hair", "regions": [{"category": "people", '
    '"bbox": [10, 20, 300, 400]}]}',
    "You inspect images for private information. Answer with JSON only. This is an image of a "
    "dog cat car person street room office school sign screen document face tattoo uniform.",
    "Write an edit instruction that changes age, hair, clothing, skin tone and accessories while "
    "keeping the layout, pose and actions. false null 0123456789 ,.:;!?()-'",
]


# The tiny Qwen2 decoder shared by the VLM's and the text LLM's builders.
_TINY_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=4096)


def _train_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with the Qwen special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=_SPECIAL_TOKENS[1:],
        padding_side="left",
    )
    fast.chat_template = _CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_qwen2_5_vl(path: Path) -> None:
    """Save a tiny random-weight Qwen2.5-VL (model, tokenizer, image and video processors)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = Path(path)
    tokenizer = _train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **_TINY_DECODER,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            intermediate_size=128,
            num_heads=4,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=56,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=_CHAT_TEMPLATE,
    )
    model.save_pretrained(path)
    processor.save_pretrained(path)


def build_tiny_causal_lm(path: Path) -> None:
    """Save a tiny random-weight Qwen2 text LLM with its tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = _train_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **_TINY_DECODER,
        bos_token_id=pad,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def build_tiny_internvl(path: Path) -> None:
    """Save a tiny random-weight HF-native InternVL (``model_type: internvl``, the layout of
    ``OpenGVLab/InternVL3_5-8B-HF``): InternViT + Qwen2 text model, GotOcr2 image processor."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        PreTrainedTokenizerFast,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_CORPUS * 4, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    template = _CHAT_TEMPLATE.replace("'<|vision_start|><|image_pad|><|vision_end|>'", "'<IMG_CONTEXT>'")
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=[28, 28], patch_size=[14, 14]),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=1, downsample_ratio=0.5,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size={"height": 28, "width": 28}, crop_to_patches=False, max_patches=1),
        tokenizer=tokenizer, video_processor=InternVLVideoProcessor(), image_seq_length=1, chat_template=template)
    model.save_pretrained(path)
    processor.save_pretrained(path)
