"""Live parity with transformers: a random tiny transformers model, converted through the CLI, must give the same
numbers (max abs diff <= 1e-5 in fp32)."""

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForImageClassification

import vlmhub  # noqa: F401  (registers the Auto classes)
from vlmhub.conversion.__main__ import main as convert_cli
from tests.conftest import text_ids

ATOL = 1e-5


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def converted(hf_model, tmp_path, auto=AutoModel):
    hf_model.save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")]) == 0
    return auto.from_pretrained(tmp_path / "ours").eval()


def hf_vit_config(**kw):
    return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  image_size=16, patch_size=4, **kw)


def hf_clip_config(eos_token_id=97):
    return transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=99, max_position_embeddings=12, eos_token_id=eos_token_id, bos_token_id=96),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                           image_size=16, patch_size=4),
        projection_dim=16,
    )


@pytest.mark.parametrize("pooler", [True, False])
def test_vit_model(tmp_path, pooler):
    hf = transformers.ViTModel(hf_vit_config(), add_pooling_layer=pooler).eval()
    ours = converted(hf, tmp_path)
    assert isinstance(ours, vlmhub.ViTModel)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = hf(pixels, output_hidden_states=True)
        b = ours(pixels, output_hidden_states=True)
    assert max_diff(a.last_hidden_state, b.last_hidden_state) <= ATOL
    assert (a.pooler_output is None) == (b.pooler_output is None) == (not pooler)
    if pooler:
        assert max_diff(a.pooler_output, b.pooler_output) <= ATOL
    assert len(a.hidden_states) == len(b.hidden_states)
    for x, y in zip(a.hidden_states, b.hidden_states):  # the last before the final norm, in both
        assert max_diff(x, y) <= ATOL
    with pytest.raises(ValueError, match="bool_masked_pos .* not supported"):  # refused, never silently ignored
        ours(pixels, bool_masked_pos=torch.zeros(2, 4, dtype=torch.bool))


def test_vit_classifier_and_interpolation(tmp_path):
    hf = transformers.ViTForImageClassification(hf_vit_config(num_labels=5)).eval()
    ours = converted(hf, tmp_path, AutoModelForImageClassification)
    assert isinstance(ours, vlmhub.ViTForImageClassification)
    pixels = torch.randn(2, 3, 16, 16)
    bigger = torch.randn(1, 3, 24, 28)
    with torch.no_grad():
        assert max_diff(hf(pixels).logits, ours(pixels).logits) <= ATOL
        assert max_diff(hf(bigger, interpolate_pos_encoding=True).logits,
                        ours(bigger, interpolate_pos_encoding=True).logits) <= ATOL
    assert ours.config.id2label == hf.config.id2label


@pytest.mark.parametrize("eos_token_id", [97, 2], ids=["eos-pooling", "legacy-argmax-pooling"])
def test_clip_model(tmp_path, eos_token_id):
    hf = transformers.CLIPModel(hf_clip_config(eos_token_id)).eval()
    ours = converted(hf, tmp_path)
    assert isinstance(ours, vlmhub.CLIPModel)
    ids, mask = text_ids(3, 12, lengths=[12, 7, 4])
    if eos_token_id == 2:
        ids[ids == 97] = 98  # argmax pooling needs the end token to be the largest id
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)
        b = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, output_hidden_states=True)
    for name in ("image_embeds", "text_embeds", "logits_per_image", "logits_per_text"):
        assert max_diff(getattr(a, name), getattr(b, name)) <= ATOL, name
    for tower in ("vision_model_output", "text_model_output"):
        x, y = getattr(a, tower), getattr(b, tower)
        assert max_diff(x.last_hidden_state, y.last_hidden_state) <= ATOL
        assert len(x.hidden_states) == len(y.hidden_states)
        for h1, h2 in zip(x.hidden_states, y.hidden_states):
            assert max_diff(h1, h2) <= ATOL
    with torch.no_grad():
        features = ours.get_image_features(pixels).pooler_output
        assert max_diff(hf.get_image_features(pixels).pooler_output, features) <= ATOL
        assert max_diff(hf.get_text_features(ids, mask).pooler_output, ours.get_text_features(ids, mask).pooler_output) <= ATOL


def test_clip_loss_matches(tmp_path):
    hf = transformers.CLIPModel(hf_clip_config()).eval()
    ours = converted(hf, tmp_path)
    ids, mask = text_ids(2, 12)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
        b = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, return_loss=True).loss
    assert max_diff(a, b) <= ATOL


def test_processor_settings_and_tokenizer_carry_over(tmp_path):
    """A transformers folder with a processor converts to our processor with the same preprocessing."""
    hf = transformers.CLIPModel(hf_clip_config())
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                         image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    hf_processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=vlmhub.build_clip_tokenizer())
    hf_processor.save_pretrained(tmp_path / "hf")
    converted(hf, tmp_path)
    ours = transformers.AutoProcessor.from_pretrained(tmp_path / "ours")
    assert type(ours) is vlmhub.VlmhubCLIPProcessor and type(ours.image_processor) is vlmhub.VlmhubCLIPImageProcessor
    images = [torch.randint(0, 256, (3, 20, 16), dtype=torch.uint8), torch.randint(0, 256, (3, 16, 24), dtype=torch.uint8)]
    kwargs = dict(text=["a red circle", "two blue squares"], images=images, padding=True, return_tensors="pt")
    a, b = hf_processor(**kwargs), ours(**kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert max_diff(a["pixel_values"], b["pixel_values"]) <= 1e-6
