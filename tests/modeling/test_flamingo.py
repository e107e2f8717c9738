"""Flamingo: Perceiver resampler, gated cross-attention in any causal LM, media locations, cached generation."""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from vlmhub.configuration.flamingo import VlmhubFlamingoConfig
from vlmhub.modeling.connectors import PerceiverResampler
from vlmhub.modeling.connectors.gated_cross_attention import DecoderLayerWithCrossAttention
from vlmhub.modeling.flamingo import VlmhubFlamingoForConditionalGeneration, image_index_from_ids, media_mask
from vlmhub.processing.flamingo import VlmhubFlamingoImageProcessor, VlmhubFlamingoProcessor, few_shot_prompt

BOS, EOC, IMAGE = 1, 96, 97
LATENTS = 4


def register():
    """The Auto classes for vlmhub_flamingo (until vlmhub/__init__.py registers the family)."""
    AutoConfig.register(VlmhubFlamingoConfig.model_type, VlmhubFlamingoConfig, exist_ok=True)
    AutoModel.register(VlmhubFlamingoConfig, VlmhubFlamingoForConditionalGeneration, exist_ok=True)
    AutoModelForImageTextToText.register(VlmhubFlamingoConfig, VlmhubFlamingoForConditionalGeneration, exist_ok=True)
    backends = {"pil": VlmhubFlamingoImageProcessor, "torchvision": VlmhubFlamingoImageProcessor}
    AutoImageProcessor.register(VlmhubFlamingoConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(VlmhubFlamingoConfig, VlmhubFlamingoProcessor, exist_ok=True)


LLAMA = dict(model_type="llama", vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=BOS,
             eos_token_id=2, pad_token_id=98)
OPT = dict(model_type="opt", vocab_size=99, hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, num_hidden_layers=4,
           num_attention_heads=4, max_position_embeddings=64, bos_token_id=BOS, eos_token_id=2, pad_token_id=98)


def tiny_config(text=LLAMA, **overrides) -> VlmhubFlamingoConfig:
    """16 px images of 4 px patches (16 tokens), a 2-layer perceiver (2 heads x 24, wider than its 16 dims) with 4
    latents, cross-attention (2 heads x 24) before decoder layers 1 and 3 of a 4-layer LM."""
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=4)
    return VlmhubFlamingoConfig(**(dict(
        vision_config=vision, text_config=text, cross_attn_every_n_layers=2, cross_attn_num_heads=2,
        cross_attn_head_dim=24, perceiver_num_layers=2, perceiver_num_heads=2, perceiver_head_dim=24,
        num_latents=LATENTS, media_token_id=IMAGE, eoc_token_id=EOC) | overrides))


def randomize(model, std: float = 0.15, gates: float = 0.8):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("_gate"):
                p.fill_(gates)
            else:
                p.copy_(std * torch.randn_like(p))
    return model


def tiny_model(text=LLAMA, gates: float = 0.8, **overrides) -> VlmhubFlamingoForConditionalGeneration:
    torch.manual_seed(0)
    return randomize(VlmhubFlamingoForConditionalGeneration(tiny_config(text, **overrides)), gates=gates).eval()


def interleaved(batch: int = 1):
    """<s> w <image> w w <eoc> <image> w <eoc> <image> w w: three images, BOS and one word before the first."""
    ids = torch.tensor([[BOS, 10, IMAGE, 11, 12, EOC, IMAGE, 13, EOC, IMAGE, 14, 15]] * batch)
    torch.manual_seed(3)
    return dict(input_ids=ids, pixel_values=torch.randn(batch, 3, 1, 3, 16, 16))


def test_cross_attention_is_placed_every_n_layers_with_flamingo_widths():
    model = tiny_model()
    layers = model.language_model.get_decoder().layers
    assert [isinstance(layer, DecoderLayerWithCrossAttention) for layer in layers] == [False, True, False, True]
    block = layers[1].gated_cross_attn
    assert block.cross_attn.q_proj.weight.shape == (48, 32)  # 2 heads x 24, not the LM's width
    assert block.cross_attn.k_proj.weight.shape == (48, 16)  # from the perceiver's width
    assert block.cross_attn.o_proj.weight.shape == (32, 48)
    assert model.cross_attention_slots == [4, 5]
    with pytest.raises(ValueError, match="places no cross-attention"):
        tiny_config(cross_attn_every_n_layers=5)
    with pytest.raises(ValueError, match="media_token_id 120"):
        tiny_config(media_token_id=120)


def bare_language_model(model):
    """A plain causal LM with the Flamingo model's language-model weights (cross-attention dropped)."""
    bare = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    state = {k.replace(".decoder_layer.", "."): v for k, v in model.language_model.state_dict().items()
             if ".gated_cross_attn." not in k}
    bare.load_state_dict(state, strict=True)
    return bare


@pytest.mark.parametrize("text", [LLAMA, OPT], ids=["llama", "opt"])
def test_zero_gates_make_the_model_equal_its_bare_language_model_exactly(text):
    model = tiny_model(text, gates=0.0)
    x = interleaved()
    bare = bare_language_model(model)
    with torch.no_grad():
        ours = model(**x).logits
        assert torch.equal(ours, bare(input_ids=x["input_ids"]).logits)
        model.language_model.get_decoder().layers[1].gated_cross_attn.attn_gate.fill_(0.5)
        assert not torch.allclose(model(**x).logits, ours)


def test_media_mask_rule_on_three_interleaved_images():
    x = interleaved()
    index = image_index_from_ids(x["input_ids"], IMAGE)
    assert index.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3]]  # the <image> token itself included
    mask = media_mask(index, 3, LATENTS)
    assert mask.shape == (1, 12, 3 * LATENTS)
    for t, k in enumerate(index[0].tolist()):
        expected = torch.zeros(3 * LATENTS, dtype=torch.bool)
        if k:
            expected[(k - 1) * LATENTS : k * LATENTS] = True
        assert torch.equal(mask[0, t], expected)


def first_block_delta(model, x):
    """Output minus input of the first cross-attention block (its input does not depend on the images)."""
    seen = {}
    block = model.language_model.get_decoder().layers[1].gated_cross_attn
    handle = block.register_forward_hook(lambda mod, args, out: seen.update(delta=out - args[0]))
    with torch.no_grad():
        model(**x)
    handle.remove()
    return seen["delta"][0]  # (T, D)


def test_each_token_cross_attends_only_to_its_most_recent_image():
    model = tiny_model()
    x = interleaved()
    index = image_index_from_ids(x["input_ids"], IMAGE)[0]
    base = first_block_delta(model, x)
    assert torch.isfinite(base).all()
    for k in range(3):
        changed = dict(x, pixel_values=x["pixel_values"].clone())
        changed["pixel_values"][0, k] = torch.randn(1, 3, 16, 16)
        moved = (first_block_delta(model, changed) - base).abs().amax(-1) > 1e-6
        assert moved.tolist() == (index == k + 1).tolist()
    # before the first image: no cross-attention output, but the gated feed-forward still applies
    block = model.language_model.get_decoder().layers[1].gated_cross_attn
    captured = {}
    handle = block.register_forward_hook(lambda mod, args, out: captured.update(x=args[0]))
    with torch.no_grad():
        model(**x)
    handle.remove()
    h = captured["x"][0, :2]
    with torch.no_grad():
        ffn = block.mlp_gate.tanh() * block.mlp(block.post_attention_layernorm(h))
    assert ffn.abs().max() > 1e-3
    torch.testing.assert_close(base[:2], ffn, atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [1, 2, 8])
def test_resampler_output_length_is_constant_for_any_frame_count(frames):
    resampler = PerceiverResampler(tiny_config().vision_config, hidden_size=16, num_layers=2, num_heads=2,
                                   head_dim=24, num_latents=LATENTS, max_num_frames=8, max_num_media=3).eval()
    with torch.no_grad():
        out = resampler(torch.randn(2, 3, frames, 16, 16))
    assert out.shape == (2, 3, LATENTS, 16)
    model = tiny_model(max_num_frames=8)
    x = interleaved()
    pixels = x["pixel_values"].expand(1, 3, frames, 3, 16, 16)
    with torch.no_grad():
        assert model.get_image_features(pixels).pooler_output.shape == (1, 3, LATENTS, 16)
        assert torch.isfinite(model(input_ids=x["input_ids"], pixel_values=pixels).logits).all()
    with pytest.raises(ValueError, match="at most 8"):
        resampler(torch.randn(1, 1, 9, 16, 16))


def test_frame_time_embeddings_tell_frames_apart():
    resampler = PerceiverResampler(tiny_config().vision_config, hidden_size=16, num_layers=1, num_heads=2,
                                   head_dim=8, num_latents=LATENTS, max_num_frames=2).eval()
    media = torch.randn(1, 1, 2, 5, 16)
    with torch.no_grad():
        swapped = resampler(media.flip(2))
        assert not torch.allclose(resampler(media), swapped)  # the time embeddings follow the frame order
        resampler.frame_embs.zero_()
        torch.testing.assert_close(resampler(media), resampler(media.flip(2)))  # without them: a set of tokens


@pytest.mark.parametrize("text", [LLAMA, OPT], ids=["llama", "opt"])
def test_cached_generation_equals_uncached_and_projects_media_once(text):
    model = tiny_model(text)
    x = interleaved(batch=2)
    x["pixel_values"][1] = torch.randn_like(x["pixel_values"][1])
    calls = {"vision": 0, "k_proj": 0}
    model.vision_model.register_forward_hook(lambda *a: calls.__setitem__("vision", calls["vision"] + 1))
    for layer in model.language_model.get_decoder().layers:
        if isinstance(layer, DecoderLayerWithCrossAttention):
            layer.gated_cross_attn.cross_attn.k_proj.register_forward_hook(
                lambda *a: calls.__setitem__("k_proj", calls["k_proj"] + 1))
    cached = model.generate(**x, max_new_tokens=6, do_sample=False)
    assert calls == {"vision": 1, "k_proj": 2}  # prefill only: 2 cross-attention layers, 6 decode steps
    uncached = model.generate(**x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (2, 18) and torch.equal(cached, uncached)


def test_step_by_step_decoding_matches_one_forward():
    model = tiny_model()
    x = interleaved()
    ids = x["input_ids"]
    index = image_index_from_ids(ids, IMAGE)
    with torch.no_grad():
        full = model(**x).logits
        out = model(input_ids=ids[:, :7], pixel_values=x["pixel_values"][:, :2], use_cache=True)
        steps = [out.logits]
        for t in range(7, 9):  # no pixels: the cache holds images 1-2; index given for the new token
            out = model(input_ids=ids[:, t : t + 1], image_index=index[:, : t + 1], cache=out.cache)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, :9], atol=1e-5, rtol=1e-5)


def test_bad_inputs_give_clear_errors():
    model = tiny_model()
    x = interleaved()
    with pytest.raises(ValueError, match=r"\[3\] <image> tokens but pixel_values hold 2 images"):
        model(input_ids=x["input_ids"], pixel_values=x["pixel_values"][:, :2])
    with pytest.raises(ValueError, match=r"\[3\] <image> tokens but pixel_values hold 4 images"):
        model(input_ids=x["input_ids"], pixel_values=torch.randn(1, 4, 1, 3, 16, 16))
    with pytest.raises(ValueError, match="vision_x"):
        model(input_ids=x["input_ids"], pixel_values=torch.randn(1, 3, 3, 16, 16))
    with torch.no_grad():
        out = model(**x, use_cache=True)
    with pytest.raises(ValueError, match="pass image_index"):
        model(input_ids=torch.tensor([[5]]), cache=out.cache)


def test_text_only_input_is_the_bare_language_model():
    model = tiny_model()
    ids = interleaved()["input_ids"].masked_fill(interleaved()["input_ids"] == IMAGE, 10)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, bare_language_model(model)(input_ids=ids).logits)


def test_sdpa_equals_eager():
    model = tiny_model()
    x = interleaved()
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
    assert type(loaded) is VlmhubFlamingoForConditionalGeneration
    x = interleaved()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)


def test_loss_and_gradient_checkpointing_train():
    model = tiny_model()
    x = interleaved()
    labels = x["input_ids"].masked_fill(x["input_ids"] == IMAGE, -100)
    model.train()
    model(**x, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "perceiver.latents" in reference and any(n.endswith("attn_gate") for n in reference)
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**x, labels=labels).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_few_shot_prompt_interleaves_demonstrations():
    prompt, images = few_shot_prompt([("a", "An apple."), ("b", "A boat.")], "Output:", query_image="q")
    assert prompt == "<image>An apple.<|endofchunk|><image>A boat.<|endofchunk|><image>Output:"
    assert images == ["a", "b", "q"]
    assert few_shot_prompt([], "Hi") == ("Hi", [])
    with pytest.raises(ValueError, match="demonstration 0"):
        few_shot_prompt([("a",)])
