"""mPLUG-Owl model behaviour: the abstractor's constant output count, merging errors, save/load, KV-cache generation."""

import pytest
import torch

from vlmhub.configuration.mplug_owl import VlmhubMplugOwlAbstractorConfig, VlmhubMplugOwlConfig
from vlmhub.modeling.connectors import Abstractor
from vlmhub.modeling.mplug_owl import VlmhubMplugOwlForConditionalGeneration

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
ABSTRACTOR = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, num_query_tokens=4)
TEXT = dict(model_type="llama", hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
            vocab_size=120, pad_token_id=0, eos_token_id=2, bos_token_id=1, max_position_embeddings=128)
IMAGE = 119
TOKENS = 5  # 4 queries + vit_eos


def config(**overrides):
    kwargs = dict(vision_config=VISION, abstractor_config=ABSTRACTOR, text_config=TEXT, image_token_id=IMAGE)
    return VlmhubMplugOwlConfig(**kwargs | overrides)


def model(**overrides):
    return VlmhubMplugOwlForConditionalGeneration(config(**overrides)).eval()


def prompt(batch: int = 1, images_per_row: int = 1, extra: int = 5) -> torch.Tensor:
    """[bos, words, (image tokens, words) * images_per_row]."""
    rows = []
    for _ in range(batch):
        row = [1] + torch.randint(3, 110, (3,)).tolist()
        for _ in range(images_per_row):
            row += [IMAGE] * TOKENS + torch.randint(3, 110, (extra,)).tolist()
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("batch, patches", [(1, 1), (2, 17), (3, 50)])
def test_abstractor_output_count_is_constant(batch, patches):
    abstractor = Abstractor(VlmhubMplugOwlAbstractorConfig(**ABSTRACTOR), out_dim=48).eval()
    out = abstractor(torch.randn(batch, patches, 32))
    assert out.shape == (batch, TOKENS, 48)
    assert torch.equal(out[:, -1], abstractor.vit_eos[0].expand(batch, -1))  # vit_eos is appended last


def test_abstractor_mask_hides_padded_features():
    abstractor = Abstractor(VlmhubMplugOwlAbstractorConfig(**ABSTRACTOR), out_dim=48).eval()
    features = torch.randn(1, 7, 32)
    padded = torch.cat([features, torch.randn(1, 3, 32)], dim=1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    with torch.no_grad():
        assert (abstractor(features) - abstractor(padded, mask)).abs().max() < 1e-6
        with pytest.raises(ValueError, match="mask must have shape"):
            abstractor(padded, mask[:, :5])


def test_model_image_features_go_through_the_connector_interface():
    m = model()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        features = m.get_image_features(pixels)
        patches = m.vision_model(pixels).last_hidden_state
        assert torch.equal(features.last_hidden_state, m.abstractor(patches))
    assert features.last_hidden_state.shape == (2, TOKENS, 48) and features.pooler_output.shape == (2, 32)


def test_wrong_number_of_image_tokens_raises():
    m = model()
    ids = prompt()
    short = ids.clone()
    short[0, 4] = 7  # one of the 5 image tokens is now text
    with pytest.raises(ValueError, match="4 image tokens .* 5 feature vectors"):
        m(input_ids=short, pixel_values=torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="10 feature vectors"):  # two images, one placeholder run
        m(input_ids=ids, pixel_values=torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="doesn't match model"):
        m(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32))


def test_config_validation():
    with pytest.raises(ValueError, match="must equal the vision tower"):
        config(abstractor_config=ABSTRACTOR | dict(hidden_size=48, num_attention_heads=2))
    with pytest.raises(ValueError, match="outside the language model's vocabulary"):
        config(image_token_id=120)
    assert config().num_image_tokens == TOKENS


def test_save_load_round_trip(tmp_path):
    m = model()
    m.save_pretrained(tmp_path)
    loaded = VlmhubMplugOwlForConditionalGeneration.from_pretrained(tmp_path).eval()
    ids, pixels = prompt(), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(m(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits)
    assert loaded.config.abstractor_config.norm_eps == 1e-5 and loaded.config.vision_config.post_layernorm == "all"


def test_generate_with_kv_cache_matches_no_cache_forward():
    m = model()
    ids, pixels = prompt(images_per_row=2), torch.randn(2, 3, 28, 28)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = m.generate(input_ids=ids, pixel_values=pixels, use_cache=True, **kwargs)
    uncached = m.generate(input_ids=ids, pixel_values=pixels, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # one full forward over prompt + generated tokens predicts every generated token
        logits = m(input_ids=cached, pixel_values=pixels).logits
    new = cached[0, ids.shape[1]:]
    assert torch.equal(logits[0, ids.shape[1] - 1 : -1].argmax(-1), new)


def test_batched_left_padded_generation_equals_one_by_one():
    m = model()
    a, b = prompt(extra=7)[0], prompt(extra=3)[0]
    ids, mask = torch.zeros(2, len(a), dtype=torch.long), torch.zeros(2, len(a), dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, len(a) - len(b):], mask[1, len(a) - len(b):] = b, 1
    pixels = torch.randn(2, 3, 28, 28)
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    both = m.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **kwargs)
    one = m.generate(input_ids=a[None], pixel_values=pixels[:1], **kwargs)
    two = m.generate(input_ids=b[None], pixel_values=pixels[1:], **kwargs)
    assert torch.equal(both[0, -5:], one[0, -5:]) and torch.equal(both[1, -5:], two[0, -5:])


def test_sdpa_equals_eager():
    m = model()
    ids, pixels = prompt(), torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        sdpa = m(input_ids=ids, pixel_values=pixels).logits
        m.set_attn_implementation("eager")
        eager = m(input_ids=ids, pixel_values=pixels).logits
    assert (sdpa - eager).abs().max() < 1e-5


def test_gradient_checkpointing_and_loss_ignores_image_tokens():
    m = model().train()
    m.activation_checkpointing_enable()
    ids, pixels = prompt(), torch.randn(1, 3, 28, 28)
    out = m(input_ids=ids, pixel_values=pixels, labels=ids)
    out.loss.backward()
    assert m.abstractor.query_tokens.grad.abs().sum() > 0 and m.abstractor.vit_eos.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():
        explicit = m(input_ids=ids, pixel_values=pixels, labels=ids.masked_fill(ids == IMAGE, -100)).loss
        implicit = m(input_ids=ids, pixel_values=pixels, labels=ids).loss
    assert torch.equal(explicit, implicit)
