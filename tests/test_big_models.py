"""Large-checkpoint loading with a local folder as the Hub (the code path of a Hub id): sharded save and reload,
device_map="auto" with a tiny max_memory (offload to CPU and disk) still generating, dtype="auto",
attn_implementation reaching the vision tower."""

import json

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForImageTextToText

import vlmhub
from tests.test_hub import IMAGE, LLAVA_TEXT, LLAVA_VISION, TINY_VISION, hf_llava, llava_inputs

GENERATE = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)


def tiny_llava():
    vision = {k: v for k, v in LLAVA_VISION.items() if k != "model_type"}
    config = vlmhub.LlavaConfig(vision_config=vision, text_config=LLAVA_TEXT, image_token_id=IMAGE, image_aspect_ratio="square")
    return vlmhub.LlavaForConditionalGeneration(config).eval()


FAMILIES = {
    "vit": (lambda: vlmhub.ViTModel(vlmhub.ViTConfig(**TINY_VISION)).eval(), AutoModel),
    "clip": (lambda: vlmhub.CLIPModel(vlmhub.CLIPConfig(vision_config=TINY_VISION, text_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99), projection_dim=16)).eval(),
        AutoModel),
    "llava": (tiny_llava, AutoModelForImageTextToText),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sharded_save_reloads_identically(tmp_path, family):
    make, auto = FAMILIES[family]
    model = make()
    model.save_pretrained(tmp_path, max_shard_size="30KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = auto.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    mine, theirs = model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_device_map_auto_with_tiny_max_memory_offloads_and_generates(tmp_path):
    model = tiny_llava()
    model.save_pretrained(tmp_path / "repo", max_shard_size="30KB")
    inputs = llava_inputs(model, next_=False)
    expected = model.generate(**inputs, **GENERATE)
    for share in (0.5, 0.8):  # measured: 0.5 splits the vision encoder's layers, 0.8 the language model's
        offloaded = AutoModelForImageTextToText.from_pretrained(
            tmp_path / "repo", device_map="auto", max_memory={"cpu": int(share * model_bytes(model))},
            offload_folder=tmp_path / f"offload-{share}")
        assert set(offloaded.hf_device_map.values()) == {"cpu", "disk"}
        assert torch.equal(offloaded.generate(**inputs, **GENERATE), expected)


def test_transformers_format_folder_offloads_too(tmp_path):
    hf = hf_llava()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
    ours = vlmhub.LlavaForConditionalGeneration.from_pretrained(
        tmp_path / "hf", device_map="auto", max_memory={"cpu": int(0.5 * model_bytes(hf))}, offload_folder=tmp_path / "offload")
    assert set(ours.hf_device_map.values()) == {"cpu", "disk"}
    inputs = llava_inputs(ours, next_=False)
    assert torch.equal(ours.generate(**inputs, **GENERATE), hf.generate(**inputs, **GENERATE))


def test_dtype_auto_takes_the_saved_dtype(tmp_path):
    tiny_llava().to(torch.bfloat16).save_pretrained(tmp_path / "ours")
    hf_llava().to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    for folder in ("ours", "hf"):
        model = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path / folder, dtype="auto")
        assert model.dtype == torch.bfloat16 and model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize("folder", ["ours", "hf"])
def test_attn_implementation_reaches_the_vision_tower(tmp_path, folder, monkeypatch):
    from vlmhub.modeling.blocks import attention

    (tiny_llava() if folder == "ours" else hf_llava()).save_pretrained(tmp_path)
    sdpa = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path)
    eager = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config.vision_config._attn_implementation == "eager" == eager.config.text_config._attn_implementation
    assert sdpa.config.vision_config._attn_implementation == "sdpa"
    calls = []
    original = attention.eager_attention
    monkeypatch.setattr(attention, "eager_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    pixels = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        reference = sdpa.vision_tower(pixels).last_hidden_state
        assert calls == []  # sdpa: the eager kernel is not used
        assert max_diff(eager.vision_tower(pixels).last_hidden_state, reference) <= 1e-5
    assert len(calls) == len(eager.vision_tower.encoder.layers)  # every tower layer ran the eager kernel


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()
