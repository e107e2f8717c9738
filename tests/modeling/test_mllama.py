"""Llama 3.2 Vision (Mllama): gated cross-attention, tile embeddings, cached image keys/values, generation."""

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from vlmhub.configuration.mllama import VlmhubMllamaConfig, VlmhubMllamaVisionConfig
from vlmhub.modeling.blocks.tiling import AspectRatioEmbedding, GatedTilePositionEmbedding
from vlmhub.modeling.connectors.gated_cross_attention import (
    DecoderLayerWithCrossAttention,
    GatedCrossAttentionLayer,
    prepare_media_mask,
)
from vlmhub.modeling.mllama import VlmhubMllamaForConditionalGeneration, VlmhubMllamaVisionModel
from vlmhub.processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor

IMAGE = 120  # image token id = vocab_size


def register():
    """The Auto classes for vlmhub_mllama (until vlmhub/__init__.py registers the family)."""
    AutoConfig.register(VlmhubMllamaConfig.model_type, VlmhubMllamaConfig, exist_ok=True)
    AutoConfig.register(VlmhubMllamaVisionConfig.model_type, VlmhubMllamaVisionConfig, exist_ok=True)
    AutoModel.register(VlmhubMllamaConfig, VlmhubMllamaForConditionalGeneration, exist_ok=True)
    AutoModel.register(VlmhubMllamaVisionConfig, VlmhubMllamaVisionModel, exist_ok=True)
    AutoModelForImageTextToText.register(VlmhubMllamaConfig, VlmhubMllamaForConditionalGeneration, exist_ok=True)
    backends = {"pil": VlmhubMllamaImageProcessor, "torchvision": VlmhubMllamaImageProcessor}
    AutoImageProcessor.register(VlmhubMllamaConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(VlmhubMllamaConfig, VlmhubMllamaProcessor, exist_ok=True)


def tiny_config(**overrides) -> VlmhubMllamaConfig:
    """28 px tiles of 14 px patches (5 tokens, padded to 8), 4 local + 2 global layers; a 3-layer Llama with
    cross-attention before self-attention layers 1 and 2 (positions [1, 3] of the 5-layer stack)."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                  num_attention_heads=4, image_size=28, patch_size=14, intermediate_layers_indices=[1, 3])
    text = dict(model_type="llama", vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=100,
                eos_token_id=101, pad_token_id=0)
    return VlmhubMllamaConfig(**(dict(vision_config=vision, text_config=text, cross_attention_layers=[1, 3],
                                      image_token_index=IMAGE) | overrides))


def randomize(model: torch.nn.Module, std: float = 0.15) -> torch.nn.Module:
    """Weights far from init: open gates, norms around 1, so that every path moves the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "gate" in name and p.numel() == 1:
                p.fill_(0.8)
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def tiny_model(**overrides) -> VlmhubMllamaForConditionalGeneration:
    torch.manual_seed(0)
    return randomize(VlmhubMllamaForConditionalGeneration(tiny_config(**overrides))).eval()


def image_inputs(grids=((2, 2), (1, 2)), batch=1):
    """pixel_values, aspect_ratio_ids, aspect_ratio_mask for images with the given (rows, cols) grids."""
    ratios = VlmhubMllamaVisionConfig(max_num_tiles=4).supported_aspect_ratios
    pixels = torch.randn(batch, len(grids), 4, 3, 28, 28)
    ids = torch.tensor([[ratios.index(list(g)) + 1 for g in grids]] * batch)
    mask = torch.zeros(batch, len(grids), 4, dtype=torch.long)
    for i, (r, c) in enumerate(grids):
        mask[:, i, : r * c] = 1
        pixels[:, i, r * c :] = 0
    return pixels, ids, mask


def prompt(grids=((2, 2), (1, 2)), length=10):
    """[bos, t, <|image|>, t, ..., <|image|>, t...] and its tile mask (each image seen from its token on)."""
    ids = torch.randint(1, 100, (1, length))
    ids[0, 0] = 100
    positions = [2 + 3 * i for i in range(len(grids))]
    ids[0, positions] = IMAGE
    mask = torch.zeros(1, length, len(grids), 4, dtype=torch.long)
    for i, (start, (r, c)) in enumerate(zip(positions, grids)):
        end = positions[i + 1] if i + 1 < len(positions) else length
        mask[0, start:end, i, : r * c] = 1
    return ids, mask


def full_inputs(grids=((2, 2), (1, 2)), length=10):
    ids, cam = prompt(grids, length)
    pixels, ar_ids, ar_mask = image_inputs(grids)
    return dict(input_ids=ids, pixel_values=pixels, aspect_ratio_ids=ar_ids, aspect_ratio_mask=ar_mask,
                cross_attention_mask=cam)


def block(**kw) -> GatedCrossAttentionLayer:
    config = tiny_config().text_config
    return GatedCrossAttentionLayer(config, hidden_size=32, num_heads=4, num_kv_heads=2, media_dim=24,
                                    intermediate_size=64, **kw).eval()


def test_zero_gates_pass_hidden_states_through_exactly():
    layer = block()
    x, media = torch.randn(2, 6, 32), torch.randn(2, 9, 24)
    mask = torch.rand(2, 6, 9) > 0.5
    mask[:, 0] = False  # a row that sees nothing
    with torch.no_grad():
        assert torch.equal(layer(x, media, mask), x)
        assert torch.equal(layer(x, media, None), x)
        layer.attn_gate.fill_(0.5)
        assert not torch.allclose(layer(x, media, mask), x)


def test_rows_without_media_give_no_nan_and_are_zeroed_as_configured():
    x, media = torch.randn(1, 5, 32), torch.randn(1, 7, 24)
    mask = torch.zeros(1, 5, 7, dtype=torch.bool)
    mask[:, 2:, :4] = True  # rows 0 and 1 come before the first image
    for both in (True, False):
        layer = block(mask_rows_in_attention=both)
        with torch.no_grad():
            layer.attn_gate.fill_(1.0), layer.mlp_gate.fill_(1.0)
            out = layer(x, media, mask)
        assert torch.isfinite(out).all()
        assert torch.equal(out[:, :2], x[:, :2]) == both  # Meta zeroes attention and MLP; transformers the MLP only
        assert not torch.allclose(out[:, 2:], x[:, 2:])


def test_a_media_mask_prepared_once_answers_as_the_boolean_one_in_every_dtype():
    x, media = torch.randn(2, 5, 32), torch.randn(2, 7, 24)
    mask = torch.rand(2, 5, 7) > 0.5
    mask[:, 0] = False  # a row that sees nothing
    layer = block(mask_rows_in_attention=True)
    prepared = prepare_media_mask(mask)
    assert prepare_media_mask(prepared) is prepared and prepare_media_mask(None) is None
    with torch.no_grad():
        layer.attn_gate.fill_(1.0), layer.mlp_gate.fill_(1.0)
        assert torch.equal(layer(x, media, prepared), layer(x, media, mask))
        assert torch.equal(layer(x, media, prepared), layer(x, media, prepared))
    additive = prepared.additive(torch.float32)
    assert prepared.additive(torch.float32) is additive  # made once, shared by the layers of a forward
    assert torch.equal(additive == 0, (mask | ~mask.any(-1, keepdim=True))[:, None])
    assert prepared.additive(torch.bfloat16).min() == torch.finfo(torch.bfloat16).min
    with pytest.raises(ValueError, match=r"media_mask must have shape .* = \(2, 5, 9\), got \(2, 5, 7\)"):
        block()(x, torch.randn(2, 9, 24), prepared)


def test_tile_embeddings_start_as_identity():
    x, ids = torch.randn(2, 4, 5, 8), torch.tensor([3, 6])
    pre = AspectRatioEmbedding(num_aspect_ratios=8, max_num_tiles=4, hidden_size=8)
    assert torch.equal(pre(x, ids), x)
    pos = GatedTilePositionEmbedding(num_aspect_ratios=8, max_num_tiles=4, num_positions=5, hidden_size=8)
    torch.nn.init.normal_(pos.embedding)
    torch.testing.assert_close(pos(x, ids), x + pos.embedding, rtol=0, atol=0)
    with torch.no_grad():
        pre.gate.fill_(1.0)
    expected = x + pre.embedding(ids).view(2, 4, 1, 8) * torch.tanh(torch.tensor(1.0))
    torch.testing.assert_close(pre(x, ids), expected)


def test_cross_attention_is_placed_by_config_and_keeps_lora_names():
    model = tiny_model()
    layers = model.language_model.get_decoder().layers
    assert [isinstance(layer, DecoderLayerWithCrossAttention) for layer in layers] == [False, True, True]
    names = {n for n, _ in model.named_modules()}
    assert "language_model.model.layers.1.gated_cross_attn.cross_attn.q_proj" in names
    assert "language_model.model.layers.1.decoder_layer.self_attn.v_proj" in names
    assert "language_model.model.layers.0.self_attn.q_proj" in names
    with pytest.raises(ValueError, match="followed by a self-attention layer"):
        tiny_config(cross_attention_layers=[1, 4])  # the last position of the 5-layer stack
    with pytest.raises(ValueError, match="adjacent"):
        tiny_config(cross_attention_layers=[1, 2])
    with pytest.raises(ValueError, match="image_token_index"):
        tiny_config(image_token_index=5)


def test_forward_shapes_and_text_only_path():
    model = tiny_model()
    x = full_inputs()
    with torch.no_grad():
        out = model(**x)
        assert out.logits.shape == (1, 10, 120)
        assert torch.isfinite(out.logits).all()
        text = torch.randint(1, 100, (1, 7))
        # without images the cross-attention layers are skipped: the plain language model
        torch.testing.assert_close(model(input_ids=text).logits, model.language_model(input_ids=text).logits)


def test_image_keys_values_are_computed_once_and_reused_when_decoding():
    model = tiny_model()
    x = full_inputs()
    calls = {"vision": 0, "k_proj": 0}
    model.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    for layer in model.language_model.get_decoder().layers:
        if isinstance(layer, DecoderLayerWithCrossAttention):
            layer.gated_cross_attn.cross_attn.k_proj.register_forward_hook(
                lambda *a: calls.__setitem__("k_proj", calls["k_proj"] + 1))
    cached = model.generate(**x, max_new_tokens=6, do_sample=False)
    assert calls == {"vision": 1, "k_proj": 2}  # prefill only: 2 cross-attention layers, 6 decode steps
    uncached = model.generate(**x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_step_by_step_decoding_matches_one_forward():
    model = tiny_model()
    x = full_inputs()
    ids, cam = x.pop("input_ids"), x.pop("cross_attention_mask")
    with torch.no_grad():
        full = model(input_ids=ids, cross_attention_mask=cam, **x).logits
        out = model(input_ids=ids[:, :6], cross_attention_mask=cam[:, :6], use_cache=True, **x)
        steps = [out.logits]
        for t in range(6, 10):  # no pixels any more: the cache holds the image keys/values
            out = model(input_ids=ids[:, t : t + 1], cross_attention_mask=cam, cache=out.cache)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_batch_of_two_equals_two_batches_of_one():
    model = tiny_model()
    a, b = full_inputs(((2, 2), (1, 2))), full_inputs(((1, 3),), length=10)
    # b has one image: pad it with an absent image (id 0, one tile in the mask, zero pixels, never attended)
    pad = dict(pixel_values=torch.zeros(1, 1, 4, 3, 28, 28), aspect_ratio_ids=torch.zeros(1, 1, dtype=torch.long),
               aspect_ratio_mask=torch.tensor([[[1, 0, 0, 0]]]), cross_attention_mask=torch.zeros(1, 10, 1, 4))
    both = {k: torch.cat([a[k], torch.cat([b[k], pad[k].to(b[k].dtype)], dim=-2 if k == "cross_attention_mask" else 1)
                          if k in pad else b[k]]) for k in a}
    with torch.no_grad():
        batched = model(**both).logits
        torch.testing.assert_close(batched[0], model(**a).logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1], model(**b).logits[0], atol=1e-5, rtol=1e-5)


def test_sdpa_equals_eager():
    model = tiny_model()
    x = full_inputs()
    with torch.no_grad():
        sdpa = model(**x).logits
        model.set_attn_implementation("eager")
        assert model.language_model.config._attn_implementation == "eager"
        eager = model(**x).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_through_auto(tmp_path):
    register()
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is VlmhubMllamaForConditionalGeneration
    x = full_inputs()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)


def test_loss_and_gradient_checkpointing_train():
    model = tiny_model()
    x = full_inputs()
    labels = x["input_ids"].masked_fill(x["input_ids"] == IMAGE, -100)
    model.train()
    loss = model(**x, labels=labels).loss
    loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("vision_model.") for n in reference) and "learnable_embedding.weight" in reference
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules() if isinstance(m, GatedCrossAttentionLayer))
    model(**x, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_vision_model_alone_matches_the_tower():
    model = tiny_model()
    vision = VlmhubMllamaVisionModel(model.config.vision_config).eval()
    vision.vision_model.load_state_dict(model.vision_model.state_dict())
    pixels, ids, _ = image_inputs()
    with torch.no_grad():
        out = vision(pixel_values=pixels, aspect_ratio_ids=ids).last_hidden_state
        assert out.shape == (1, 2, 4, 5, 96)
        assert torch.equal(out, model.get_image_features(pixels, ids).last_hidden_state)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x = full_inputs()
    with pytest.raises(ValueError, match="does not match aspect_ratio_ids"):
        model(**(x | dict(aspect_ratio_mask=torch.ones(1, 2, 4, dtype=torch.long))))
    with pytest.raises(ValueError, match="aspect_ratio_ids must lie in"):
        model(**(x | dict(aspect_ratio_ids=torch.tensor([[6, 9]]), aspect_ratio_mask=None)))
    with pytest.raises(ValueError, match=r"\[1\] image tokens but \[2\] images"):
        ids = x["input_ids"].clone()
        ids[ids == IMAGE] = 7
        ids[0, 2] = IMAGE
        model(**(x | dict(input_ids=ids)))
    with pytest.raises(ValueError, match="pixel_values must be"):
        model(**(x | dict(pixel_values=x["pixel_values"][:, :, :2])))
    with pytest.raises(ValueError, match="cross_attention_mask must be"):
        model(**(x | dict(cross_attention_mask=x["cross_attention_mask"][..., :2])))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(input_ids=torch.tensor([[1, 500]]))
    with pytest.raises(ValueError, match=r"the image token \(\d+\) cannot be a target"):  # labels = input_ids
        model(**x, labels=x["input_ids"])


def test_image_cache_slots_survive_cropping_the_text():
    model = tiny_model()
    x = full_inputs()
    with torch.no_grad():
        cache = model(**x, use_cache=True).cache
    assert len(cache.layers) == 5 and cache.get_seq_length() == 10  # 3 text layers + 2 image slots
    image_keys = cache.layers[3].keys.clone()
    assert image_keys.shape[-2] == 2 * 4 * 5  # images * tiles * tokens
    cache.crop(-4)  # assisted decoding rolls back rejected text tokens
    assert cache.get_seq_length() == 6 and torch.equal(cache.layers[3].keys, image_keys)
    x = full_inputs(length=16)
    x["input_ids"][0, 11:14] = x["input_ids"][0, 6:9]  # a repeat for prompt-lookup candidates
    greedy = model.generate(**x, max_new_tokens=10, do_sample=False)
    assert torch.equal(model.generate(**x, max_new_tokens=10, do_sample=False, prompt_lookup_num_tokens=3), greedy)
