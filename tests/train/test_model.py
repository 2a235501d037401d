"""The two-text editor model: fused attention starts at the base model, saved editors reload with
their conditioning and run; config and CLI refuse what they do not know. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytestmark = pytest.mark.usefixtures("tiny_models")


def _base():
    from unsafe2safe_ray.train.model import load_base_components

    return load_base_components("tiny://instruct_pix2pix", "fused")[0]


def test_fused_attention_starts_exactly_at_the_base_model():
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from unsafe2safe_ray.models import resolve_model_source
    from unsafe2safe_ray.train.model import encode_texts

    base = StableDiffusionInstructPix2PixPipeline.from_pretrained(resolve_model_source("tiny://instruct_pix2pix"))
    fused = _base()
    torch.manual_seed(0)
    sample, t = torch.randn(1, 8, 8, 8), torch.tensor([500])
    with torch.no_grad():
        both = encode_texts(base.tokenizer, base.text_encoder, ["change the hair"], ["a cup of coffee"], "cpu")
        instruction_only = both[:, : both.shape[1] // 2]
        expected = base.unet(sample, t, encoder_hidden_states=instruction_only).sample
        got = fused.unet(sample, t, encoder_hidden_states=both).sample
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("conditioning", ["fused", "concat"])
def test_a_saved_editor_reloads_with_its_conditioning_and_edits(conditioning, tmp_path):
    from unsafe2safe_ray.train.model import (
        FusedContextProcessor,
        fused_gates,
        is_finetuned_editor,
        load_base_components,
        load_editor_pipeline,
        read_manifest,
        save_editor,
    )

    pipe, _ = load_base_components("tiny://instruct_pix2pix", conditioning)
    for proc in pipe.unet.attn_processors.values():
        if isinstance(proc, FusedContextProcessor):
            proc.gate.data.fill_(0.25)
    save_editor(tmp_path, pipe, pipe.unet, {"conditioning": conditioning, "step": 7, "base_model": "tiny"})
    assert is_finetuned_editor(str(tmp_path)) and not is_finetuned_editor("tiny://instruct_pix2pix")
    assert read_manifest(str(tmp_path))["step"] == 7
    loaded = load_editor_pipeline(str(tmp_path))
    gates = fused_gates(loaded.unet)
    assert (len(gates) > 0) == (conditioning == "fused")
    assert all(float(g) == 0.25 for g in gates.values())
    image = Image.fromarray(np.full((32, 32, 3), 120, np.uint8))
    out = loaded(prompt=["change the hair"], caption=["a cup of coffee"], image=[image], num_inference_steps=2,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_the_editor_loads_a_finetuned_folder_through_the_config_key(tmp_path):
    from unsafe2safe_ray.config import load_config
    from unsafe2safe_ray.editors import EditRequest, load_editor
    from unsafe2safe_ray.train.model import save_editor

    pipe = _base()
    save_editor(tmp_path, pipe, pipe.unet, {"conditioning": "fused", "step": 1, "base_model": "tiny"})
    config = load_config("none", overrides=[f"edit.instruct_pix2pix_model={tmp_path}", "edit.steps=2"])
    editor = load_editor("instruct-pix2pix", config)
    assert getattr(editor.pipe, "two_text", False)
    out = editor.edit([EditRequest(image=np.full((32, 32, 3), 90, np.uint8), target_prompt="a cup",
                                   instruction="change the hair", seed=1)])
    assert out[0].shape == (32, 32, 3) and out[0].dtype == np.uint8


def test_finetune_and_utility_refuse_unknown_settings():
    from unsafe2safe_ray.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["finetune", "--data", "x", "--originals", "y", "--out", "z",
                                 "--set", "finetune.learning_rat=1e-4"])
    assert result.exit_code == 2 and "finetune.learning_rat" in result.output
    result = runner.invoke(app, ["finetune", "--data", "x", "--originals", "y", "--out", "z",
                                 "--set", "finetune.conditioning=sum"])
    assert result.exit_code == 2 and "finetune.conditioning" in result.output
    result = runner.invoke(app, ["utility", "--train", "x", "--test", "y", "--mode", "mae-finetune",
                                 "--set", "utility.epoch=3"])
    assert result.exit_code == 2 and "utility.epoch" in result.output


def test_ema_averages_and_swaps_back():
    from unsafe2safe_ray.train.loop import _Ema

    params = [torch.nn.Parameter(torch.zeros(3))]
    ema = _Ema(params, decay=0.5)
    with torch.no_grad():
        params[0].fill_(2.0)
    ema.update(params)
    assert torch.allclose(ema.shadow[0], torch.full((3,), 1.0))
    ema.swap(params)  # the averaged weights are live (what a checkpoint's editor folder holds)
    assert torch.allclose(params[0], torch.full((3,), 1.0))
    ema.swap(params)
    assert torch.allclose(params[0], torch.full((3,), 2.0))
