"""Behaviour every vlmhub model must have, run over tiny variants of each family."""

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

import vlmhub
from tests.conftest import text_ids, tiny_text, tiny_vision

VARIANTS = {
    "vit": lambda: vlmhub.ViTModel(vlmhub.ViTConfig(**tiny_vision(hidden_act="gelu"))),
    "vit-classifier": lambda: vlmhub.ViTForImageClassification(vlmhub.ViTConfig(**tiny_vision(), num_labels=3)),
    "clip": lambda: vlmhub.CLIPModel(
        vlmhub.CLIPConfig(vision_config=tiny_vision(), text_config=tiny_text(), projection_dim=16)
    ),
    "clip-eva-bias": lambda: vlmhub.CLIPModel(  # EVA's q/v bias without k bias, no ln_pre, norm on all tokens
        vlmhub.CLIPConfig(vision_config=tiny_vision(k_bias=False, pre_layernorm=False, post_layernorm="all"),
                          text_config=tiny_text(), projection_dim=16)
    ),
    "clip-vision": lambda: vlmhub.CLIPVisionModel(vlmhub.CLIPVisionConfig(**tiny_vision())),
    "clip-text": lambda: vlmhub.CLIPTextModel(vlmhub.CLIPTextConfig(**tiny_text())),
}


def inputs(model, batch=2):
    ids, mask = text_ids(batch, 10)
    pixels = torch.randn(batch, 3, 16, 16)
    if isinstance(model, vlmhub.CLIPModel):
        return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    if isinstance(model, vlmhub.CLIPTextModel):
        return dict(input_ids=ids, attention_mask=mask)
    return dict(pixel_values=pixels)


def outputs(model, out) -> dict[str, torch.Tensor]:
    """The tensors that define a model's answer, batch first."""
    if isinstance(model, vlmhub.CLIPModel):
        return {"image_embeds": out.image_embeds, "text_embeds": out.text_embeds}
    if isinstance(model, vlmhub.ViTForImageClassification):
        return {"logits": out.logits}
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    return VARIANTS[request.param]().eval()


def test_save_load_round_trip_through_auto(model, tmp_path):
    model.save_pretrained(tmp_path)
    auto = AutoModelForImageClassification if isinstance(model, vlmhub.ViTForImageClassification) else AutoModel
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    x = inputs(model)
    with torch.no_grad():
        a, b = outputs(model, model(**x)), outputs(loaded, loaded(**x))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_batch_of_two_equals_two_batches_of_one(model):
    x = inputs(model)
    with torch.no_grad():
        both = outputs(model, model(**x))
        for i in range(2):
            one = outputs(model, model(**{k: v[i : i + 1] for k, v in x.items()}))
            for name in both:
                torch.testing.assert_close(one[name][0], both[name][i], atol=1e-5, rtol=1e-5)


def test_sdpa_equals_eager(model):
    x = inputs(model)
    with torch.no_grad():
        sdpa = outputs(model, model(**x))
        model.set_attn_implementation("eager")
        eager = outputs(model, model(**x))
    for name in sdpa:
        torch.testing.assert_close(sdpa[name], eager[name], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_trains(model):
    x = inputs(model)
    model.train()
    loss = sum(t.float().pow(2).mean() for t in outputs(model, model(**x)).values())
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    loss = sum(t.float().pow(2).mean() for t in outputs(model, model(**x)).values())
    loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_hidden_states_and_attentions(model):
    if isinstance(model, vlmhub.CLIPModel):
        pytest.skip("CLIPModel returns them inside the tower outputs; covered by the towers")
    with torch.no_grad():
        out = model(**inputs(model), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape[1] == 4  # heads


def test_device_map_load(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(2, 3, 20, 16), (2, 1, 16, 16), (3, 16, 16)])
def test_wrong_pixel_tensor_raises(shape):
    model = VARIANTS["vit"]()
    with pytest.raises(ValueError, match="pixel_values|image size"):
        model(pixel_values=torch.randn(*shape))


def test_interpolated_positions_accept_other_sizes():
    model = VARIANTS["vit"]().eval()
    out = model(pixel_values=torch.randn(1, 3, 24, 32), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (1, 1 + 6 * 8, 32)


def test_text_longer_than_positions_raises():
    model = VARIANTS["clip-text"]()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.ones(1, 13, dtype=torch.long))


def test_contrastive_loss_and_config_validation():
    model = VARIANTS["clip"]()
    out = model(**inputs(model), return_loss=True)
    assert out.loss.ndim == 0 and out.loss > 0
    out.loss.backward()
    assert model.logit_scale.grad is not None
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        vlmhub.ViTConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="post_layernorm"):
        vlmhub.CLIPVisionConfig(post_layernorm="sometimes")
