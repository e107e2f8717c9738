"""BLIP (v1): live parity with transformers' BlipForConditionalGeneration (captioning logits, loss, greedy) and
BlipForImageTextRetrieval (ITM logits, ITC similarity), converted through the CLI."""

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from vlmhub.configuration.blip import VlmhubBlipConfig
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.modeling.blip import VlmhubBlipForConditionalGeneration, VlmhubBlipForImageTextRetrieval

ATOL = 1e-5
BOS, SEP = 97, 3


def register():
    """Until the lead adds the FAMILIES row (AutoModel -> retrieval, AutoModelForImageTextToText -> captioning)."""
    AutoConfig.register("vlmhub_blip", VlmhubBlipConfig, exist_ok=True)
    AutoModel.register(VlmhubBlipConfig, VlmhubBlipForImageTextRetrieval, exist_ok=True)
    AutoModelForImageTextToText.register(VlmhubBlipConfig, VlmhubBlipForConditionalGeneration, exist_ok=True)


register()


def hf_config(label_smoothing=0.0):
    return transformers.BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
                         max_position_embeddings=32, bos_token_id=BOS, sep_token_id=SEP, eos_token_id=SEP, pad_token_id=0,
                         label_smoothing=label_smoothing),
        image_text_hidden_size=16)


def randomized(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0))
    return model.eval()


def converted(hf, tmp_path, auto):
    hf.save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")]) == 0
    return auto.from_pretrained(tmp_path / "ours").eval()


def captions():
    ids = torch.cat([torch.full((2, 1), BOS), torch.randint(5, 90, (2, 6)), torch.full((2, 1), SEP)], 1)
    mask = torch.ones_like(ids)
    ids[1, -2:], mask[1, -2:] = 0, 0
    ids[1, -3] = SEP
    return ids, mask


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_captioning_parity(tmp_path, label_smoothing):
    hf = randomized(transformers.BlipForConditionalGeneration(hf_config(label_smoothing)))
    ours = converted(hf, tmp_path, AutoModelForImageTextToText)
    assert isinstance(ours, VlmhubBlipForConditionalGeneration)
    assert ours.config.text_config.label_smoothing == label_smoothing
    ids, mask = captions()
    labels = ids.masked_fill(mask == 0, -100)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = hf(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels)
        b = ours(pixel_values=pixels, input_ids=ids, attention_mask=mask, labels=labels)
    valid = mask.bool()
    diffs = {"logits": max_diff(a.logits[valid], b.logits[valid]), "loss": max_diff(a.loss, b.loss),
             "image_embeds": max_diff(a.image_embeds, b.image_embeds),
             "last_hidden_state": max_diff(a.last_hidden_state, b.last_hidden_state)}  # transformers' fields
    print("blip captioning max abs diffs", diffs)
    assert all(d <= ATOL for d in diffs.values()), diffs
    kwargs = dict(pixel_values=pixels, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    theirs, mine = hf.generate(**kwargs), ours.generate(**kwargs)
    assert torch.equal(theirs, mine)
    prompt = dict(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
    assert torch.equal(hf.generate(pixel_values=pixels[:1], **prompt, max_new_tokens=5, do_sample=False),
                       ours.generate(pixel_values=pixels[:1], **prompt, max_new_tokens=5, do_sample=False))


def test_retrieval_parity(tmp_path):
    hf = randomized(transformers.BlipForImageTextRetrieval(hf_config()))
    ours = converted(hf, tmp_path, AutoModel)
    assert isinstance(ours, VlmhubBlipForImageTextRetrieval)
    ids, mask = captions()
    ids[:, 0] = 98  # [ENC]-style first token for the matching head
    pixels = torch.randn(2, 3, 16, 16)
    diffs = {}
    for head in (True, False):  # matching head, then the [CLS] cosine similarities
        with torch.no_grad():
            a, b = (model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=head) for model in (hf, ours))
        for field in ("itm_score", "last_hidden_state", "question_embeds"):  # transformers' fields
            diffs[f"{'itm' if head else 'itc'} {field}"] = max_diff(getattr(a, field), getattr(b, field))
    print("blip retrieval max abs diffs", diffs)
    assert all(d <= ATOL for d in diffs.values()), diffs


def test_caption_decoding_projects_the_image_once(tmp_path):
    """The image keys/values of every cross-attention are projected at the first step and read from the generation
    cache after (as transformers' EncoderDecoderCache): the same tokens as transformers, as decoding without a cache,
    with beam search (the cached image rows follow the beams) and with prompt lookup (which crops the cache)."""
    hf = randomized(transformers.BlipForConditionalGeneration(hf_config()))
    ours = converted(hf, tmp_path, AutoModelForImageTextToText)
    layers = ours.text_decoder.layers
    projections = []
    hooks = [layer.cross_attn.k_proj.register_forward_hook(lambda *_: projections.append(1)) for layer in layers]
    pixels = torch.randn(2, 3, 16, 16)
    kwargs = dict(pixel_values=pixels, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with torch.no_grad():
        cached = ours.generate(**kwargs)
        assert len(projections) == len(layers)  # once per layer for 6 tokens
        projections.clear()
        assert torch.equal(cached, ours.generate(**kwargs, use_cache=False))
        assert len(projections) == 6 * len(layers)  # without a cache: every step
        assert torch.equal(cached, hf.generate(**kwargs))
        beams = dict(kwargs, num_beams=3, num_return_sequences=2)
        assert torch.equal(ours.generate(**beams), hf.generate(**beams))
        # prompt lookup crops the cache when it rejects drafted tokens: the image slots stay whole
        one = dict(kwargs, pixel_values=pixels[:1])
        assert torch.equal(ours.generate(**one, prompt_lookup_num_tokens=2), cached[:1])
    for hook in hooks:
        hook.remove()


def test_a_cached_caption_step_gives_the_full_forward_logits(tmp_path):
    hf = randomized(transformers.BlipForConditionalGeneration(hf_config()))
    ours = converted(hf, tmp_path, AutoModelForImageTextToText)
    ids, _ = captions()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        full = ours(pixel_values=pixels, input_ids=ids).logits
        first = ours(pixel_values=pixels, input_ids=ids[:, :-2], use_cache=True)
        step = ours(image_embeds=first.image_embeds, input_ids=ids[:, -2:], cache=first.cache)
    cache = first.cache
    assert len(cache.layers) == 2 * len(ours.text_decoder.layers)  # self-attention slots, then the image slots
    assert cache.get_seq_length() == ids.shape[1]
    assert max_diff(step.logits, full[:, -2:]) <= ATOL


def test_caption_length_limit_and_missing_image():
    ours = VlmhubBlipForConditionalGeneration(VlmhubBlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
                           patch_size=4),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99,
                         max_position_embeddings=8)))
    with pytest.raises(ValueError, match="pixel_values"):
        ours(input_ids=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_position_embeddings 8"):
        ours(input_ids=torch.ones(1, 9, dtype=torch.long), pixel_values=torch.randn(1, 3, 16, 16))
    assert ours.lm_head.decoder.weight is ours.text_decoder.word_embeddings.weight


def test_processor_tokenizes_plainly_with_dec_and_enc(tmp_path):
    from tests.conftest import FIXTURES
    from vlmhub.processing.blip import VlmhubBlipImageProcessor, VlmhubBlipProcessor, build_blip_tokenizer

    tokenizer = build_blip_tokenizer(FIXTURES / "lavis-blip2-qformer" / "bert_tokenizer" / "vocab.txt")
    assert tokenizer.bos_token == "[DEC]" and tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [77, 78]
    processor = VlmhubBlipProcessor(VlmhubBlipImageProcessor(size={"height": 16, "width": 16}), tokenizer)
    out = processor(images=[torch.zeros(3, 20, 24, dtype=torch.uint8)], text=["a red bird"], return_tensors="pt")
    assert out["input_ids"].tolist() == [[2, 5, 12, 13, 3]] and out["pixel_values"].shape == (1, 3, 16, 16)
