"""MiniGPT-4 models: the Vicuna variant (Q-Former) and the Llama-2 variant (4 merged patches), on tiny configs."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.conversion.test_minigpt4_conversion import register
from vlmhub.configuration.minigpt4 import VlmhubMiniGPT4Config
from vlmhub.modeling.minigpt4 import VlmhubMiniGPT4ForConditionalGeneration, merge_adjacent_patches

register()
IMAGE = 98
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4)
QFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_query_tokens=4)
LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             vocab_size=99, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def model_for(use_qformer: bool) -> VlmhubMiniGPT4ForConditionalGeneration:
    config = VlmhubMiniGPT4Config(vision_config=VISION, qformer_config=QFORMER, text_config=LLAMA,
                                  use_qformer=use_qformer, image_token_id=IMAGE)
    return VlmhubMiniGPT4ForConditionalGeneration(config).eval()


@pytest.fixture(params=[True, False], ids=["vicuna-qformer", "llama2-merged-patches"])
def model(request):
    return model_for(request.param)


def batch(model, n=2):
    k = model.num_image_tokens
    ids = torch.cat([torch.randint(3, 90, (n, 3)), torch.full((n, k), IMAGE), torch.randint(3, 90, (n, 4))], 1)
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 3, 16, 16))


def test_image_token_counts():
    assert model_for(True).num_image_tokens == 4  # the queries
    assert model_for(False).num_image_tokens == 16 // 4  # 16 patches, 4 merged into each token
    with pytest.raises(ValueError, match="cannot be merged"):
        VlmhubMiniGPT4Config(vision_config=VISION | dict(image_size=12), text_config=LLAMA, use_qformer=False)


def test_merge_adjacent_patches_concatenates_runs():
    tokens = torch.arange(2 * 8 * 3).reshape(2, 8, 3).float()
    merged = merge_adjacent_patches(tokens, 4)
    assert merged.shape == (2, 2, 12)
    assert torch.equal(merged[1, 1], torch.cat(list(tokens[1, 4:8])))


def test_round_trip_batch_and_eager(model, tmp_path):
    x = batch(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is VlmhubMiniGPT4ForConditionalGeneration and (loaded.qformer is None) == (model.qformer is None)
    with torch.no_grad():
        both = model(**x).logits
        assert torch.equal(both, loaded(**x).logits)
        one = model(**{k: v[:1] for k, v in x.items()}).logits
        torch.testing.assert_close(one[0], both[0], atol=1e-5, rtol=1e-5)
        model.set_attn_implementation("eager")
        valid = x["attention_mask"].bool()
        torch.testing.assert_close(model(**x).logits[valid], both[valid], atol=1e-5, rtol=1e-5)


def test_training_step_and_mismatch(model):
    x = batch(model)
    model.train()
    model.activation_checkpointing_enable()
    out = model(**x, labels=x["input_ids"].masked_fill(x["input_ids"] == IMAGE, -100))
    out.loss.backward()
    assert model.llama_proj.weight.grad is not None and model.vision.ln_vision.weight.grad is not None
    x["input_ids"][0, 3] = 5
    with pytest.raises(ValueError, match="image tokens"):
        model(**x)


def test_generate(model):
    x = batch(model, 1)
    out = model.generate(**x, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == x["input_ids"].shape[1] + 3
