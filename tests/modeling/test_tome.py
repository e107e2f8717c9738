"""ToMe token merging (connectors/tome.py) and LLaVA's visual_token_merge option: counts, exactness, order, the
processor's token expansion, save/load and config errors."""

import numpy as np
import pytest
import torch
from PIL import Image

import vlmhub
from tests.processing.test_llava_processing import tokenizer
from vlmhub.modeling.connectors import TokenMerger, bipartite_soft_matching, merge_tokens

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
TEXT = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=40, pad_token_id=0, eos_token_id=2, bos_token_id=1)
CROP = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
IMAGE = 3  # "<image>" in the tokenizer below


def config(**overrides):
    kwargs = dict(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE, image_aspect_ratio="square") | overrides
    return vlmhub.LlavaConfig(**kwargs)


def processor(cfg):
    from vlmhub.processing.llava import _processor

    image_processor = vlmhub.LlavaImageProcessor(image_aspect_ratio=cfg.image_aspect_ratio,
                                                 image_grid_pinpoints=cfg.image_grid_pinpoints, **CROP)
    return _processor(image_processor, tokenizer(), cfg)


def picture(h=28, w=28, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- the pure function -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N", [16, 15, 7, 2])
def test_merging_r_tokens_leaves_n_minus_r_and_conserves_size_and_mass(N):
    x = torch.randn(3, N, 8, dtype=torch.float64)
    for r in range(N):
        out, size = merge_tokens(x, r)
        assert out.shape == (3, N - r, 8) and size.shape == (3, N - r, 1)
        assert torch.equal(size.sum(1), torch.full((3, 1), float(N), dtype=torch.float64))  # every patch counted once
        torch.testing.assert_close((out * size).sum(1), x.sum(1))  # size-weighted means keep the total


def test_r_zero_is_the_identity():
    x = torch.randn(2, 16, 8)
    assert torch.equal(merge_tokens(x, 0)[0], x) and torch.equal(bipartite_soft_matching(x, 0)[0], x)
    assert TokenMerger(0)(x) is x


def test_identical_tokens_merge_exactly_and_sizes_weight_the_mean():
    torch.manual_seed(0)
    v = torch.randn(8)
    x = torch.stack([v, v, torch.randn(8), -v])[None]  # A = {0, 2}, B = {1, 3}; token 0 equals token 1
    out, size = bipartite_soft_matching(x, 1)
    assert torch.equal(out[0, 0], v) and torch.equal(out[0, 1:], x[0, 2:])  # merged exactly; others untouched
    assert size[0, :, 0].tolist() == [2, 1, 1]
    # Hand-built: t0 (size 3) is closest to t1 (cos 0.71; t2's best is 0) -> (3 * [4, 0] + 1 * [4, 4]) / 4 = [4, 1]
    x = torch.tensor([[[4.0, 0.0], [4.0, 4.0], [0.0, -1.0], [-1.0, 0.0]]])
    out, size = bipartite_soft_matching(x, 1, torch.tensor([[[3.0], [1.0], [1.0], [1.0]]]))
    assert out[0].tolist() == [[4.0, 1.0], [0.0, -1.0], [-1.0, 0.0]] and size[0, :, 0].tolist() == [4, 1, 1]
    # Merging down to one token gives the mean of all (sizes 1) through several rounds.
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    out, size = merge_tokens(x, 8)
    torch.testing.assert_close(out[:, 0], x.mean(1))
    assert size[:, 0, 0].tolist() == [9, 9]


@pytest.mark.parametrize("r", [12, 24])  # one round; two rounds (18 + 6)
def test_unmerged_tokens_keep_their_order_and_values(r):
    torch.manual_seed(0)
    x = torch.randn(4, 36, 16)
    out, size = merge_tokens(x, r)
    for b in range(4):
        singles = out[b][size[b, :, 0] == 1]  # tokens nothing was merged into
        positions = [int((x[b] == t).all(-1).nonzero()) for t in singles]  # each equals exactly one input
        assert positions == sorted(positions) and len(singles) >= 36 - 2 * r
        torch.testing.assert_close(out[b : b + 1], merge_tokens(x[b : b + 1], r)[0])  # batched = one by one


def test_bfloat16_merges_in_fp32_and_keeps_its_dtype():
    x = torch.randn(2, 64, 8).bfloat16()
    out, size = merge_tokens(x, 60)  # groups of up to ~30 patches: sizes must stay exact integers
    assert out.dtype == torch.bfloat16 and size.dtype == torch.float32 and size.sum(1).tolist() == [[64.0], [64.0]]
    assert torch.equal(out, merge_tokens(x.float(), 60)[0].bfloat16())  # = the fp32 merge, rounded once


def test_protected_class_token_stays_first_and_unchanged():
    x = torch.randn(2, 17, 8)
    out, size = merge_tokens(x, 10, protect_first=True)
    assert out.shape == (2, 7, 8) and torch.equal(out[:, 0], x[:, 0]) and size[:, 0, 0].tolist() == [1, 1]


def test_merge_errors_name_the_numbers():
    with pytest.raises(ValueError, match=r"cannot merge 16 of 16 .* \[0, 15\]"):
        merge_tokens(torch.randn(1, 16, 4), 16)
    with pytest.raises(ValueError, match="one matching round can merge 0 to 8 of 16 tokens, got r=9"):
        bipartite_soft_matching(torch.randn(1, 16, 4), 9)
    with pytest.raises(ValueError, match=">= 0"):
        TokenMerger(-1)


# --- LLaVA with the option ---------------------------------------------------------------------------------------


def test_llava_with_token_merging_runs_forward_and_generate_with_the_processor_prompt():
    cfg = config(visual_token_merge=8)  # 16 patches -> 8 tokens (50%)
    model = vlmhub.LlavaForConditionalGeneration(cfg).eval()
    p = processor(cfg)
    assert cfg.tokens_per_crop == cfg.tokens_per_image() == p.num_image_tokens() == 8
    inputs = p(images=picture(), text="USER: <image> what is this ? ASSISTANT:", return_tensors="pt")
    assert (inputs["input_ids"] == IMAGE).sum() == 8
    with torch.no_grad():
        out = model(**inputs)
    assert torch.cat(out.image_outputs.pooler_output).shape == (8, 64)
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
    loss = model(**inputs, labels=inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE, -100)).loss
    loss.backward()  # the merge is differentiable: gradients reach the tower through the averaged tokens
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    full = processor(config())(images=picture(), text="USER: <image> what is this ? ASSISTANT:", return_tensors="pt")
    with pytest.raises(ValueError, match="16 image tokens .* 8 feature vectors"):  # an unmerged prompt is refused
        model(**full)


def test_token_merging_with_pooling_class_token_and_anyres_flat():
    pooled = config(spatial_pool_stride=2, visual_token_merge=2)  # 4 pooled tokens -> 2
    cls = config(vision_feature_select_strategy="cls_patch", visual_token_merge=6)  # 16 - 6 patches + class token
    anyres = config(image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS, visual_token_merge=12)
    for cfg, expected in ((pooled, 2), (cls, 11), (anyres, 4 * 3)):  # anyres: a 28x56 image = base + 2 crops
        model, p = vlmhub.LlavaForConditionalGeneration(cfg).eval(), processor(cfg)
        inputs = p(images=picture(28, 56), text="USER: <image> what ? ASSISTANT:", return_tensors="pt")
        assert (inputs["input_ids"] == IMAGE).sum() == expected == cfg.tokens_per_image((28, 56))
        with torch.no_grad():
            assert torch.cat(model(**inputs).image_outputs.pooler_output).shape == (expected, 64)


def test_save_load_round_trips_the_option(tmp_path):
    cfg = config(visual_token_merge=5)
    model, p = vlmhub.LlavaForConditionalGeneration(cfg).eval(), processor(cfg)
    assert set(model.state_dict()) == set(vlmhub.LlavaForConditionalGeneration(config()).state_dict())  # no weights
    model.save_pretrained(tmp_path)
    p.save_pretrained(tmp_path)
    loaded = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_p = vlmhub.LlavaProcessor.from_pretrained(tmp_path)
    assert loaded.config.visual_token_merge == 5 and loaded_p.visual_token_merge == 5
    inputs = loaded_p(images=picture(), text="USER: <image> ASSISTANT:", return_tensors="pt")
    assert (inputs["input_ids"] == IMAGE).sum() == 11
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


@pytest.mark.parametrize("overrides, message", [
    (dict(visual_token_merge=-1), "number of tokens >= 0, got -1"),
    (dict(visual_token_merge=16), "16 would leave no tokens: a crop has 16 patch tokens .* at most 15"),
    (dict(visual_token_merge=4, spatial_pool_stride=2), "4 would leave no tokens: a crop has 4"),
    (dict(visual_token_merge=4, image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS,
          patch_merge_type="spatial_unpad"), "cannot be combined with patch_merge_type='spatial_unpad'"),
    (dict(visual_token_merge=4, image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS,
          patch_merge_type="spatial"), "use patch_merge_type='flat'"),
])
def test_bad_config_values_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_processor_refuses_an_impossible_merge():
    p = processor(config())
    p.visual_token_merge = 16
    with pytest.raises(ValueError, match="visual_token_merge 16 must leave at least one of a crop's 16 patch tokens"):
        p(images=picture(), text="<image>", return_tensors="pt")


def test_merge_traces_as_one_graph():
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda x: merge_tokens(x, 24, protect_first=True)[0])(torch.randn(2, 37, 8))
    torch._dynamo.reset()
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
