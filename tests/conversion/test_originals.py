"""Parity against the original implementations through the oracle bundles in tests/fixtures/.

Each bundle holds a checkpoint in the released format, inputs, and the original code's outputs; the converted
vlmhub model must reproduce them within the bundle's tolerance (1e-4; we reach ~1e-6).
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

import vlmhub
from vlmhub.conversion import ConversionError, convert
from vlmhub.conversion.__main__ import main as convert_cli
from tests.conftest import FIXTURES

TOL = 1e-4
CLIP, TIMM = FIXTURES / "openai-clip", FIXTURES / "timm-vit"


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=["model.pt", "model-jit.pt"])
def openai_clip(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "converted"
    assert convert_cli(["openai-clip", "--input", str(CLIP / request.param), "--output", str(out)]) == 0
    return AutoModel.from_pretrained(out).eval(), out


def test_openai_clip_outputs(openai_clip):
    model, _ = openai_clip
    inputs, expected = load_file(CLIP / "inputs.safetensors"), load_file(CLIP / "expected.safetensors")
    with torch.no_grad():
        out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
        image = model.get_image_features(inputs["pixel_values"]).pooler_output
        text = model.get_text_features(inputs["input_ids"]).pooler_output
    got = {
        "image_features": image,
        "text_features": text,
        "logits_per_image": out.logits_per_image,
        "logits_per_text": out.logits_per_text,
        "vision_last_hidden_state": out.vision_model_output.last_hidden_state,
        "vision_pooled_before_proj": model.vision_model(inputs["pixel_values"]).pooler_output,
        "text_last_hidden_state": out.text_model_output.last_hidden_state,
        "text_pooled_before_proj": model.text_model(inputs["input_ids"]).pooler_output,
    }
    for name, tensor in got.items():
        assert max_diff(tensor, expected[name]) <= TOL, name


def test_openai_clip_config_from_shapes(openai_clip):
    model, _ = openai_clip
    hp = json.loads((CLIP / "manifest.json").read_text())["hyperparameters"]
    assert model.config.vision_config.num_attention_heads == hp["vision"]["width"] // 64 == 2
    assert model.config.text_config.num_attention_heads == hp["text"]["width"] // 64
    assert model.config.vision_config.image_size == hp["vision"]["image_resolution"]
    assert model.config.projection_dim == hp["embed_dim"]
    assert model.logit_scale.item() == pytest.approx(hp["logit_scale"])


def test_openai_clip_processor_reproduces_original_preprocessing(openai_clip):
    _, folder = openai_clip
    processor = AutoImageProcessor.from_pretrained(folder)  # vocab 100 is not OpenAI's: no tokenizer is written
    assert isinstance(processor, vlmhub.CLIPImageProcessor)
    pixels = processor(images=[str(CLIP / "raw" / f"image_{i}.png") for i in range(2)], return_tensors="pt")["pixel_values"]
    assert max_diff(pixels, load_file(CLIP / "inputs.safetensors")["pixel_values"]) <= 1e-6


def test_openai_clip_both_formats_give_identical_weights():
    a, _ = convert("openai-clip", CLIP / "model.pt")
    b, _ = convert("openai-clip", CLIP / "model-jit.pt")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["pytorch_model.pth", "vit.npz"])
def test_timm_vit_outputs(name, tmp_path):
    out = tmp_path / "converted"
    assert convert_cli(["timm-vit", "--input", str(TIMM / name), "--output", str(out), "--num-attention-heads", "4"]) == 0
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert isinstance(model, vlmhub.ViTForImageClassification)
    inputs, expected = load_file(TIMM / "inputs.safetensors"), load_file(TIMM / "expected.safetensors")
    with torch.no_grad():
        result = model(inputs["pixel_values"], output_hidden_states=True)
        features = model.vit(inputs["pixel_values"]).last_hidden_state
    assert max_diff(result.logits, expected["logits"]) <= TOL
    assert max_diff(features, expected["forward_features"]) <= TOL
    assert max_diff(features[:, 0], expected["pre_logits"]) <= TOL
    assert max_diff(result.hidden_states[-1], expected["blocks_output_before_norm"]) <= TOL


def test_timm_pth_and_npz_convert_bit_identically():
    a, _ = convert("timm-vit", TIMM / "pytorch_model.pth", num_attention_heads=4)
    b, _ = convert("timm-vit", TIMM / "vit.npz")  # the .npz stores the head count itself
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_timm_pth_needs_head_count_for_unknown_width():
    with pytest.raises(ConversionError, match="--num-attention-heads"):
        convert("timm-vit", TIMM / "pytorch_model.pth")
    with pytest.raises(ConversionError, match="contradicts"):
        convert("timm-vit", TIMM / "vit.npz", num_attention_heads=2)
