"""LLaVA parity: live against transformers (Llava, LlavaNext) and against the original code (fixtures)."""

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlmhub
from vlmhub.conversion import ConversionError, convert
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.geometry.anyres import anyres_num_tokens
from tests.conftest import FIXTURES, PIXEL_TOLERANCE

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
              patch_size=7, model_type="clip_vision_model")
TEXT = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=120, pad_token_id=0, eos_token_id=2, bos_token_id=1)
PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
IMAGE = 119


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def through_cli(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours")]) == 0
    return AutoModelForImageTextToText.from_pretrained(tmp_path / "ours").eval()


def prompt_ids(counts: list[int], text_len: int = 6, left_pad: list[int] | None = None):
    """Left-padded rows [bos, words, image tokens, words]; pads differ per row."""
    rows = [[1] + torch.randint(3, 110, (text_len,)).tolist() + [IMAGE] * n + torch.randint(3, 110, (3,)).tolist() for n in counts]
    width = max(map(len, rows)) + max(left_pad or [0])
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def compare(hf, ours, **inputs):
    """Max abs diff of the logits and of each image's features (image_outputs.pooler_output), and whether greedy
    generation gives the same tokens."""
    with torch.no_grad():
        a, b = hf(**inputs), ours(**inputs)
    mask = inputs["attention_mask"].bool()
    features = zip(a.image_outputs.pooler_output, b.image_outputs.pooler_output, strict=True)
    diff = max([max_diff(a.logits[mask], b.logits[mask])] + [max_diff(x, y) for x, y in features])
    generate = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    same = torch.equal(hf.generate(**inputs, **generate), ours.generate(**inputs, **generate))
    return diff, same


def test_llava_15_matches_transformers(tmp_path):
    hf = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE)).eval()
    ours = through_cli(hf, tmp_path)
    assert isinstance(ours, vlmhub.VlmhubLlavaForConditionalGeneration)
    ids, mask = prompt_ids([16, 16], left_pad=[0, 3])
    diff, same = compare(hf, ours, input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 28, 28))
    assert diff <= 1e-5 and same


def test_per_call_feature_layer_and_strategy_equal_transformers(tmp_path):
    """transformers' LLaVA takes vision_feature_layer and vision_feature_select_strategy per call; so do we."""
    hf = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE)).eval()
    ours = through_cli(hf, tmp_path)
    pixels = torch.randn(2, 3, 28, 28)
    for choice, tokens in ((dict(vision_feature_layer=-1), 16), (dict(vision_feature_layer=[-3]), 16),
                           (dict(vision_feature_select_strategy="full"), 17)):  # "full" keeps the class token
        ids, mask = prompt_ids([tokens, tokens], left_pad=[0, 2])
        with torch.no_grad():
            a = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, **choice).logits
            b = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels, **choice).logits
            assert max_diff(a[mask.bool()], b[mask.bool()]) <= 1e-5, choice
            theirs, mine = hf.get_image_features(pixels, **choice), ours.get_image_features(pixels, **choice)
            assert max_diff(torch.cat(list(theirs.pooler_output)), torch.cat(list(mine.pooler_output))) <= 1e-5
    with pytest.raises(ValueError, match="selects 2 layers but the projector takes 1"):
        ours.get_image_features(pixels, vision_feature_layer=[-2, -1])
    with pytest.raises(ValueError, match="must be one of"):
        ours.get_image_features(pixels, vision_feature_select_strategy="cls")
    for positional in (-1, [-2, -1]):  # transformers' LLaVA-1.5 order; ours is LLaVA-NeXT's (image_sizes second)
        with pytest.raises(TypeError, match="pass vision_feature_layer and vision_feature_select_strategy by name"):
            ours.get_image_features(pixels, positional)


def test_images_encoded_once_serve_forward_and_generate(tmp_path):
    """transformers' mm_encoder_outputs: {"image": get_image_features(...)} instead of pixel_values."""
    hf = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(
        vision_config=VISION, text_config=TEXT, image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS)).eval()
    ours = through_cli(hf, tmp_path)
    sizes = torch.tensor([[45, 75], [60, 25]])
    ids, mask = prompt_ids([anyres_num_tokens(tuple(s), PINPOINTS, 28, 4) for s in sizes.tolist()])
    pixels = torch.randn(2, 5, 3, 28, 28)
    with torch.no_grad():
        encoded = {"image": ours.get_image_features(pixels, image_sizes=sizes)}
        expected = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_sizes=sizes).logits
        got = ours(input_ids=ids, attention_mask=mask, mm_encoder_outputs=encoded).logits
    assert max_diff(expected[mask.bool()], got[mask.bool()]) <= 1e-5
    generate = dict(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(mm_encoder_outputs=encoded, **generate),
                       hf.generate(pixel_values=pixels, image_sizes=sizes, **generate))
    with pytest.raises(ValueError, match="pass pixel_values or mm_encoder_outputs"):
        ours(input_ids=ids, pixel_values=pixels, image_sizes=sizes, mm_encoder_outputs=encoded)


def test_llava_next_two_aspect_ratios_match_transformers(tmp_path):
    hf = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(
        vision_config=VISION, text_config=TEXT, image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS)).eval()
    ours = through_cli(hf, tmp_path)
    sizes = torch.tensor([[45, 75], [60, 25]])  # wide and tall, (height, width)
    counts = [anyres_num_tokens(tuple(s), PINPOINTS, 28, 4) for s in sizes.tolist()]
    ids, mask = prompt_ids(counts)
    pixels = torch.randn(2, 5, 3, 28, 28)
    diff, same = compare(hf, ours, input_ids=ids, attention_mask=mask, pixel_values=pixels, image_sizes=sizes)
    assert diff <= 1e-5 and same


@pytest.mark.parametrize("bundle, checkpoint", [("llava-1.5", "llava-v1.5-tiny"), ("llava-1.6-anyres", "llava-v1.6-vicuna-tiny")])
def test_original_llava_fixture(bundle, checkpoint, tmp_path):
    root = FIXTURES / bundle
    assert convert_cli(["llava", "--input", str(root / checkpoint), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    inputs, expected = load_file(root / "inputs.safetensors"), load_file(root / "expected.safetensors")
    raw = [root / "raw" / "img0_150x90.png", root / "raw" / "img1_50x120.png"]
    pixels = processor.image_processor(raw, return_tensors="pt")
    counts = [processor.num_image_tokens(size) for size in (pixels["image_sizes"].tolist() if "image_sizes" in pixels else [(56, 56)] * 2)]
    assert counts == expected["num_image_tokens"].tolist()  # 16/16 for 1.5, 52/66 for 1.6
    if "pixel_values" in inputs:  # our preprocessing reproduces the original's
        theirs, ours = inputs["pixel_values"], pixels["pixel_values"]
    else:
        theirs = torch.cat([inputs["pixel_values_0"], inputs["pixel_values_1"]])
        ours = torch.cat([pixels["pixel_values"][0], pixels["pixel_values"][1, :4]])
    assert max_diff(ours, theirs) <= PIXEL_TOLERANCE
    pixels["pixel_values"] = original_pixels(inputs)  # the model's parity is measured on the original's own pixels
    ids, mask = merged_ids(inputs, counts, model.config.image_token_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **{k: v for k, v in pixels.items()})
    keep = expected["merged_attention_mask"].bool()
    vocab = expected["logits"].shape[-1]
    assert max_diff(out.logits[..., :vocab][keep], expected["logits"][keep]) <= 1e-4  # measured 2e-6 / 3.2e-6
    assert max_diff(out.image_outputs.pooler_output[0], expected["image_features_0"]) <= 1e-4


def original_pixels(inputs):
    if "pixel_values" in inputs:
        return inputs["pixel_values"]
    padded = torch.zeros(2, 5, *inputs["pixel_values_0"].shape[1:])
    padded[0], padded[1, :4] = inputs["pixel_values_0"], inputs["pixel_values_1"]
    return padded


def merged_ids(inputs, counts, image_token_id):
    """The original's -200 sentinel replaced by each image's run of real image tokens, right-padded."""
    rows = []
    for i, n in enumerate(counts):
        row = inputs["input_ids"][i][inputs["attention_mask"][i].bool()].tolist()
        at = row.index(-200)
        rows.append(row[:at] + [image_token_id] * n + row[at + 1:])
    ids, mask = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long), None
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_llava_16_takes_the_fine_tuned_tower_from_the_checkpoint():
    root = FIXTURES / "llava-1.6-anyres"
    model, _ = convert("llava", root / "llava-v1.6-vicuna-tiny")
    standalone = load_file(root / "clip-vit-tiny-patch14-56" / "model.safetensors")
    ours = model.vision_tower.encoder.layers[0].self_attn.q_proj.weight
    assert not torch.equal(ours, standalone["vision_model.encoder.layers.0.self_attn.q_proj.weight"].float())


def test_image_token_is_real_and_suppressed_in_generation():
    model, processor = convert("llava", FIXTURES / "llava-1.5" / "llava-v1.5-tiny")
    assert model.config.image_token_id == 200 == processor.image_token_id
    assert model.generation_config.suppress_tokens == [200]


def test_missing_vision_tower_is_a_clear_error(tmp_path):
    import shutil

    shutil.copytree(FIXTURES / "llava-1.5" / "llava-v1.5-tiny", tmp_path / "ckpt")
    with pytest.raises(ConversionError, match="--vision-tower"):
        convert("llava", tmp_path / "ckpt")
