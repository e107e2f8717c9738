"""BLIP-2 models: behaviour of the generative model (OPT and Llama soft prompts) and the stage-1 model, with a tiny
stage-1 training run whose ITC / ITM / ITG losses fall."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText

from tests.conversion.test_blip2_conversion import TEXT_CONFIGS, register
from vlmhub.configuration.blip2 import VlmhubBlip2Config, VlmhubBlip2Stage1Config
from vlmhub.modeling.blip2 import VlmhubBlip2ForConditionalGeneration, VlmhubBlip2ForImageTextRetrieval
from vlmhub.train.objectives import blip2_stage1_losses, itc_similarities, sample_hard_negatives

register()
Q, IMAGE = 4, 98
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16, patch_size=4)
QFORMER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_query_tokens=Q,
               vocab_size=40, max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def generative(text="opt") -> VlmhubBlip2ForConditionalGeneration:
    config = VlmhubBlip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=TEXT_CONFIGS[text],
                               image_token_id=IMAGE)
    return VlmhubBlip2ForConditionalGeneration(config).eval()


def stage1() -> VlmhubBlip2ForImageTextRetrieval:
    config = VlmhubBlip2Stage1Config(vision_config=VISION, qformer_config=QFORMER | dict(use_text_input=True),
                                     image_text_hidden_size=16)
    return VlmhubBlip2ForImageTextRetrieval(config).eval()


def batch(n=2, length=6):
    ids = torch.cat([torch.full((n, Q), IMAGE), torch.randint(3, 90, (n, length))], 1)
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0
    return dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(n, 3, 16, 16))


@pytest.fixture(params=sorted(TEXT_CONFIGS))
def model(request):
    return generative(request.param)


def test_round_trip_through_auto(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is VlmhubBlip2ForConditionalGeneration
    x = batch()
    with torch.no_grad():
        assert torch.equal(model(**x).logits, loaded(**x).logits)


def test_batch_of_two_equals_two_of_one(model):
    x = batch()
    with torch.no_grad():
        both = model(**x).logits
        for i in range(2):
            one = model(**{k: v[i : i + 1] for k, v in x.items()}).logits
            valid = x["attention_mask"][i].bool()
            torch.testing.assert_close(one[0][valid], both[i][valid], atol=1e-5, rtol=1e-5)


def test_sdpa_equals_eager(model):
    x = batch()
    with torch.no_grad():
        sdpa = model(**x).logits
        model.set_attn_implementation("eager")
        assert model.config.qformer_config._attn_implementation == "eager"
        eager = model(**x).logits
    valid = x["attention_mask"].bool()
    torch.testing.assert_close(sdpa[valid], eager[valid], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(model):
    x = batch()
    model.train()
    torch.manual_seed(1)  # the same dropout masks in both runs (checkpointing replays the RNG state)
    model(**x, labels=x["input_ids"]).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("qformer.") for n in reference) and any(n.startswith("vision.") for n in reference)
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    torch.manual_seed(1)
    model(**x, labels=x["input_ids"]).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, atol=1e-5, rtol=1e-4)


def test_image_token_count_mismatch_raises(model):
    x = batch()
    x["input_ids"][0, 0] = 5  # one image token fewer than the 2 x 4 query outputs
    with pytest.raises(ValueError, match="7 image tokens.*8 feature vectors"):
        model(**x)


def test_generate_with_and_without_prompt(model):
    x = batch(1)
    out = model.generate(**x, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, x["input_ids"].shape[1] + 4) and torch.equal(out[:, : x["input_ids"].shape[1]], x["input_ids"])
    bare = model.generate(pixel_values=x["pixel_values"], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert bare.shape == (1, Q + 1 + 3) and (bare[0, :Q] == IMAGE).all()



def test_generate_decodes_on_the_bare_language_model_with_this_models_generation_config(model):
    """As transformers' BLIP-2: the soft prompt goes in once, as the prompt's embeddings, and the decode steps run the
    language model alone (no wrapper per step); this model's generation_config (suppress_tokens, ...) applies, and a
    generation_config passed in replaces it. Greedy tokens equal a loop of full forwards."""
    x = batch(1)
    x["attention_mask"][:] = 1  # no padding: full forwards number positions as generate does
    calls = {"wrapper": 0, "language_model": 0}
    hooks = [m.register_forward_pre_hook(lambda *_, key=key: calls.__setitem__(key, calls[key] + 1))
             for key, m in (("wrapper", model), ("language_model", model.language_model))]
    try:
        out = model.generate(**x, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {"wrapper": 0, "language_model": 4}
    ids = x["input_ids"]
    for _ in range(4):  # the same tokens from full forwards, no cache
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=x["pixel_values"]).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    first = int(out[0, -4])
    model.generation_config.suppress_tokens = [first]
    try:
        assert model.generate(**x, max_new_tokens=4, do_sample=False)[0, -4] != first
        own = copy.deepcopy(model.generation_config)
        own.suppress_tokens, own.max_new_tokens, own.do_sample = None, 4, False
        assert torch.equal(model.generate(**x, generation_config=own), out)
    finally:
        model.generation_config.suppress_tokens = None

def test_stage1_round_trip_and_tied_head(tmp_path):
    model = stage1()
    assert model.lm_head.decoder.weight is model.qformer.word_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is VlmhubBlip2ForImageTextRetrieval
    assert loaded.lm_head.decoder.weight is loaded.qformer.word_embeddings.weight
    pixels, ids = torch.randn(2, 3, 16, 16), torch.randint(5, 40, (3, 6))
    with torch.no_grad():
        a, b = model(pixels, ids), loaded(pixels, ids)
        assert a.logits_per_image.shape == (2, 3)
        torch.testing.assert_close(a.logits_per_image, b.logits_per_image)
        itm = model(pixels, ids[:2], use_image_text_matching_head=True).logits_per_image
        assert itm.shape == (2, 2)


def test_hard_negatives_are_never_the_positive():
    sim = torch.randn(5, 5) * 10
    for seed in range(20):
        neg_text, neg_image = sample_hard_negatives(sim, sim.t(), torch.Generator().manual_seed(seed))
        assert (neg_text != torch.arange(5)).all() and (neg_image != torch.arange(5)).all()


def toy_set(n=2, length=6):
    """n images of distinct solid colours, each with its own fixed caption ([CLS]=2, words, [SEP]=3)."""
    g = torch.Generator().manual_seed(0)
    colours = torch.randn(n, 3, generator=g)
    pixels = colours[:, :, None, None].expand(n, 3, 16, 16) + 0.05 * torch.randn(n, 3, 16, 16, generator=g)
    words = torch.randint(5, 38, (n, length - 2), generator=g)
    ids = torch.cat([torch.full((n, 1), 2), words, torch.full((n, 1), 3)], 1)
    return pixels, ids, torch.ones_like(ids)


def evaluate(model, pixels, ids, mask):
    with torch.no_grad():
        runs = [blip2_stage1_losses(model, pixels, ids, mask, 39, torch.Generator().manual_seed(s)) for s in range(4)]
    return {k: sum(r[k] for r in runs).item() / len(runs) for k in ("itc", "itm", "itg")}


def test_tiny_stage1_run_losses_fall():
    torch.manual_seed(0)
    model = stage1()
    pixels, ids, mask = toy_set()
    before = evaluate(model.eval(), pixels, ids, mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3)
    model.train()
    for step in range(80):
        losses = blip2_stage1_losses(model, pixels, ids, mask, 39, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    after = evaluate(model.eval(), pixels, ids, mask)
    print("stage-1 losses before", before, "after", after)
    for name in ("itc", "itm", "itg"):
        assert after[name] < 0.6 * before[name], (name, before[name], after[name])
    sim_i2t, _ = itc_similarities(*model.get_image_features(pixels)[2:], model.get_text_features(ids, mask)[1], model.temp)
    assert torch.equal(sim_i2t.argmax(1), torch.arange(2))  # retrieval on the toy set is right after training
