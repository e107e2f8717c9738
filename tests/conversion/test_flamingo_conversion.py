"""OpenFlamingo conversion: the open-flamingo bundle (checkpoint.pt + vision_encoder/ + lang_encoder/) against the
outputs of open_flamingo 2.0.1, for the released open_clip behaviour and for open_clip >= 2.23 (ln_post)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import FIXTURES, PIXEL_TOLERANCE
from tests.modeling.test_flamingo import register
from vlmhub.conversion import SOURCES, ConversionError
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.conversion.sources import open_flamingo
from vlmhub.modeling.flamingo import VlmhubFlamingoForConditionalGeneration
from vlmhub.processing.flamingo import VlmhubFlamingoProcessor

BUNDLE = FIXTURES / "open-flamingo"
ATOL = 1e-4
VARIANTS = {"released (open_clip 2.20, no ln_post)": (False, ""), "open_clip 3.3 (ln_post)": (True, "_open_clip_3_3")}
PROMPT = "<image> w1 w2 <|endofchunk|> <image> w3 w4"


@pytest.fixture(autouse=True, scope="module")
def _registered():
    register()
    with pytest.MonkeyPatch.context() as patch:  # until vlmhub/conversion/sources/__init__.py lists the source
        patch.setitem(SOURCES, "open-flamingo", open_flamingo)
        yield


@pytest.fixture(scope="module")
def bundle():
    return load_file(BUNDLE / "inputs.safetensors"), load_file(BUNDLE / "expected.safetensors")


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("ln_post, suffix", VARIANTS.values(), ids=VARIANTS.keys())
def test_logits_match_open_flamingo(bundle, ln_post, suffix):
    inputs, expected = bundle
    model, _ = open_flamingo.convert(BUNDLE, patch_tokens_ln_post=ln_post)
    config = model.config
    assert config.cross_attention_targets() == [1] and config.media_token_id == 97 and config.eoc_token_id == 96
    assert config.vision_config.num_attention_heads == 2  # width 32 // head_width 16 from the open_clip config
    with torch.no_grad():
        features = model.get_image_features(inputs["vision_x"])
        logits = model(input_ids=inputs["lang_x"], pixel_values=inputs["vision_x"],
                       attention_mask=inputs["attention_mask"]).logits
    assert max_diff(features.last_hidden_state.flatten(0, 2), expected["vision_tokens" + suffix]) <= ATOL
    assert max_diff(features.pooler_output, expected["perceiver_output" + suffix]) <= ATOL
    assert max_diff(logits, expected["logits" + suffix]) <= ATOL
    other = "_open_clip_3_3" if not suffix else ""
    assert max_diff(logits, expected["logits" + other]) > 0.01  # the switch matters


def test_media_rule_matches_the_sensitivity_probe(bundle):
    """Replacing image k by noise moves exactly the positions the manifest's probe says (BOS never; image 1 only
    from its own <image> on)."""
    inputs, _ = bundle
    probe = json.loads((BUNDLE / "manifest.json").read_text())["sensitivity_probe"]
    model, _ = open_flamingo.convert(BUNDLE)
    x = dict(input_ids=inputs["lang_x"], pixel_values=inputs["vision_x"])
    with torch.no_grad():
        base = model(**x).logits[0]
        for k in range(2):
            pixels = x["pixel_values"].clone()
            pixels[0, k] = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(k))
            moved = (model(input_ids=x["input_ids"], pixel_values=pixels).logits[0] - base).abs().amax(-1)
            assert (moved > 1e-6).tolist() == [v > 0 for v in probe[f"image {k}"]]


def test_cli_conversion_loads_with_auto_classes_and_processor_rebuilds_inputs(bundle, tmp_path):
    inputs, expected = bundle
    assert convert_cli(["open-flamingo", "--input", str(BUNDLE), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(model) is VlmhubFlamingoForConditionalGeneration and type(processor) is VlmhubFlamingoProcessor
    x = processor(images=[[BUNDLE / "raw/image_0.png", BUNDLE / "raw/image_1.png"]], text=PROMPT, return_tensors="pt")
    assert torch.equal(x["input_ids"], inputs["lang_x"])
    assert max_diff(x["pixel_values"], inputs["vision_x"]) <= PIXEL_TOLERANCE
    with torch.no_grad():
        assert max_diff(model(**x).logits, expected["logits"]) <= (ATOL if PIXEL_TOLERANCE == 0 else 0.5)
    cached = model.generate(**x, max_new_tokens=5, do_sample=False)
    assert torch.equal(cached, model.generate(**x, max_new_tokens=5, do_sample=False, use_cache=False))


def test_few_shot_helper_builds_the_bundle_prompt(bundle):
    inputs, _ = bundle
    _, processor = open_flamingo.convert(BUNDLE)
    raw = [BUNDLE / "raw/image_0.png", BUNDLE / "raw/image_1.png"]
    x = processor.few_shot([(raw[0], " w1 w2 ")], query_text=" w3 w4", query_image=raw[1], return_tensors="pt")
    assert torch.equal(x["input_ids"], inputs["lang_x"])
    assert x["pixel_values"].shape == (1, 2, 1, 3, 28, 28)
    with pytest.raises(ValueError, match=r"texts have \[2\] <image> tokens per sample but \[1\] images"):
        processor(images=[raw[:1]], text=PROMPT)


def test_lm_folder_saved_before_the_tokens_were_added(tmp_path, bundle):
    """A released lang_encoder has the base vocabulary only: lm_head gets mean rows for the added tokens."""
    inputs, expected = bundle
    shutil.copytree(BUNDLE, tmp_path / "b")
    lm = load_file(BUNDLE / "lang_encoder/model.safetensors")
    save_file({k: (v[:96] if k in ("lm_head.weight", "model.embed_tokens.weight") else v) for k, v in lm.items()},
              tmp_path / "b/lang_encoder/model.safetensors")
    model, _ = open_flamingo.convert(tmp_path / "b")
    assert model.config.text_config.vocab_size == 99
    with torch.no_grad():
        logits = model(input_ids=inputs["lang_x"], pixel_values=inputs["vision_x"]).logits
    assert max_diff(logits[..., :96], expected["logits"][..., :96]) <= ATOL  # the base vocabulary is unchanged


def test_missing_parts_are_named(tmp_path):
    shutil.copytree(BUNDLE, tmp_path / "b", ignore=shutil.ignore_patterns("vision_encoder"))
    with pytest.raises(ConversionError, match="vision_encoder is missing"):
        open_flamingo.convert(tmp_path / "b")
    with pytest.raises(ConversionError, match="not open_flamingo's every-n-th-layer placement"):
        open_flamingo.cross_attn_every_n([0, 2, 3], 4)
