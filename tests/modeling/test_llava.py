"""LLaVA model behaviour: merging, errors, token compression, batched generation, common mixin checks."""

import pytest
import torch

import vlmhub
from vlmhub.modeling.merge import merge_image_features

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=7)
TEXT = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=120, pad_token_id=0, eos_token_id=2, bos_token_id=1)
IMAGE = 119


def model(**overrides):
    config = vlmhub.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE, image_aspect_ratio="square",
                                **overrides)
    return vlmhub.LlavaForConditionalGeneration(config).eval()


def prompt(n_image_tokens: int, batch: int = 1, extra: int = 5) -> torch.Tensor:
    ids = torch.randint(3, 110, (batch, n_image_tokens + extra))
    ids[:, 2 : 2 + n_image_tokens] = IMAGE
    return ids


def test_merge_places_rows_in_order_and_checks_counts():
    embeds = torch.zeros(2, 4, 3)
    ids = torch.tensor([[5, IMAGE, IMAGE, 6], [IMAGE, 7, 8, 9]])
    features = torch.arange(9.0).reshape(3, 3)
    merged = merge_image_features(embeds, ids, features, IMAGE)
    assert merged[0, 1].tolist() == [0, 1, 2] and merged[0, 2].tolist() == [3, 4, 5] and merged[1, 0].tolist() == [6, 7, 8]
    assert merged[0, 0].abs().sum() == 0
    with pytest.raises(ValueError, match="3 image tokens .* 2 feature vectors"):
        merge_image_features(embeds, ids, features[:2], IMAGE)
    # per-image features (LLaVA's pooler_output list) are joined in order, a single one used as it is
    assert torch.equal(merge_image_features(embeds, ids, [features[:2], features[2:]], IMAGE), merged)
    assert torch.equal(merge_image_features(embeds, ids, [features], IMAGE), merged)
    with pytest.raises(ValueError, match="3 image tokens .* 2 feature vectors"):
        merge_image_features(embeds, ids, [features[:1], features[2:]], IMAGE)


def test_wrong_number_of_image_tokens_raises():
    m = model()
    with pytest.raises(ValueError, match="15 image tokens .* 16 feature vectors"):
        m(input_ids=prompt(15), pixel_values=torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="32 feature vectors"):  # two images, one placeholder run
        m(input_ids=prompt(16), pixel_values=torch.randn(2, 3, 28, 28))


def test_wrong_pixel_size_raises():
    with pytest.raises(ValueError, match="doesn't match model"):
        model()(input_ids=prompt(16), pixel_values=torch.randn(1, 3, 32, 32))


def test_spatial_pooling_gives_four_times_fewer_tokens():
    pooled = model(spatial_pool_stride=2)
    assert pooled.config.tokens_per_crop == 4  # (28/7 / 2)^2 instead of 16
    out = pooled(input_ids=prompt(4), pixel_values=torch.randn(1, 3, 28, 28))
    assert torch.cat(out.image_outputs.pooler_output).shape == (4, 64)
    with pytest.raises(ValueError, match="does not divide"):
        model(spatial_pool_stride=3)


def test_linear_projector_and_cls_patch_selection():
    m = model(projector_type="linear", vision_feature_select_strategy="cls_patch", vision_feature_layer=[-2, -1])
    assert not hasattr(m.multi_modal_projector, "linear_2")
    assert m.multi_modal_projector.linear_1.in_features == 64  # two layers concatenated
    out = m(input_ids=prompt(17), pixel_values=torch.randn(1, 3, 28, 28))
    assert torch.cat(out.image_outputs.pooler_output).shape == (17, 64)


def test_a_per_call_strategy_must_fit_what_the_model_was_built_for():
    anyres = vlmhub.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE, image_aspect_ratio="anyres",
                                image_grid_pinpoints=[[28, 56], [56, 28], [56, 56]])
    with pytest.raises(ValueError, match="cannot replace the configured 'patch' of a model with AnyRes"):
        anyres.feature_selection(strategy="full")
    pooled = model(spatial_pool_stride=2).config
    with pytest.raises(ValueError, match="with spatial pooling"):
        pooled.feature_selection(strategy="cls_patch")
    assert pooled.feature_selection(-1, "default") == ([-1], "patch")  # transformers' name for our "patch"


def test_vision_tower_stops_at_the_selected_layer():
    m = model()
    calls = []
    m.vision_tower.encoder.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    m(input_ids=prompt(16), pixel_values=torch.randn(1, 3, 28, 28))
    assert calls == []  # layer -1 is never run when -2 is selected


def test_batched_left_padded_generation_equals_one_by_one():
    m = model()
    torch.manual_seed(1)
    a, b = prompt(16, extra=7)[0], prompt(16, extra=3)[0]
    ids = torch.zeros(2, len(a), dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = a, 1
    ids[1, len(a) - len(b):], mask[1, len(a) - len(b):] = b, 1
    pixels = torch.randn(2, 3, 28, 28)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    both = m.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **kwargs)
    one = m.generate(input_ids=a[None], pixel_values=pixels[:1], **kwargs)
    two = m.generate(input_ids=b[None], pixel_values=pixels[1:], **kwargs)
    assert torch.equal(both[0, -6:], one[0, -6:]) and torch.equal(both[1, -6:], two[0, -6:])


def test_save_load_and_lora_targets(tmp_path):
    m = model()
    m.save_pretrained(tmp_path)
    loaded = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pixels = prompt(16), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits)
    names = [n for n, _ in m.named_modules() if n.endswith(("q_proj", "v_proj"))]
    assert any(n.startswith("language_model.") for n in names) and any(n.startswith("vision_tower.") for n in names)


def test_gradient_checkpointing_and_loss():
    m = model().train()
    m.activation_checkpointing_enable()
    ids = prompt(16)
    labels = ids.masked_fill(ids == IMAGE, -100)
    out = m(input_ids=ids, pixel_values=torch.randn(1, 3, 28, 28), labels=labels)
    out.loss.backward()
    assert m.multi_modal_projector.linear_1.weight.grad.abs().sum() > 0
