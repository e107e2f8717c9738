"""ViT / CLIP image processors: the OpenAI CLIP oracle, live parity with transformers, round trips, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.clip.processing_clip import CLIPProcessor as HFCLIPProcessor
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from vlmhub.processing.clip import VlmhubCLIPImageProcessor, VlmhubCLIPProcessor
from vlmhub.processing.image import shortest_edge_size
from vlmhub.processing.vit import VlmhubViTImageProcessor

CLIP_BUNDLE = Path(__file__).parents[1] / "fixtures" / "openai-clip"
RAW = [CLIP_BUNDLE / "raw" / "image_0.png", CLIP_BUNDLE / "raw" / "image_1.png"]
TINY_CLIP = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})  # the bundle's 28 px
# (height, width): all four cases of portrait / landscape / square / much longer side, plus odd sizes
SIZES = [(40, 50), (64, 48), (33, 77), (32, 32), (100, 37), (300, 400), (500, 250)]


def random_image(height, width, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def max_diff(a, b):
    return (torch.as_tensor(a) - torch.as_tensor(b)).abs().max().item()


def tiny_tokenizer():
    words = ["[PAD]", "[UNK]", "a", "photo", "of", "cat", "dog"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


# --- 1. the original OpenAI CLIP preprocessing, from the fixture bundle ----------------------------------------


def test_clip_reproduces_openai_pixel_values():
    expected = load_file(CLIP_BUNDLE / "inputs.safetensors")["pixel_values"]  # (2, 3, 28, 28)
    processor = VlmhubCLIPImageProcessor(**TINY_CLIP)
    from_paths = processor([str(p) for p in RAW], return_tensors="pt").pixel_values
    from_pil = processor([Image.open(p) for p in RAW], return_tensors="pt").pixel_values
    assert from_paths.shape == expected.shape and from_paths.dtype == torch.float32
    assert max_diff(from_paths, expected) <= 1e-6  # measured 0.0
    assert torch.equal(from_pil, from_paths)


def test_transformers_floor_crop_is_one_pixel_off_on_image_0():
    """image_0 resizes to 35x28: we crop from column round(3.5) = 4, transformers from floor(3.5) = 3."""
    expected = load_file(CLIP_BUNDLE / "inputs.safetensors")["pixel_values"]
    images = [Image.open(p) for p in RAW]
    ours = VlmhubCLIPImageProcessor(**TINY_CLIP)(images, return_tensors="pt").pixel_values
    theirs = CLIPImageProcessorPil(**TINY_CLIP)(images, return_tensors="pt").pixel_values
    assert max_diff(ours[1], theirs[1]) == 0.0  # image_1: excess 14 rows, floor and round agree (7)
    assert max_diff(ours[0], theirs[0]) > 0.1  # whole-image comparison fails...
    assert max_diff(ours[0, :, :, :-1], theirs[0, :, :, 1:]) == 0.0  # ...but it is exactly a one-column shift
    assert max_diff(theirs[0], expected[0]) > 0.1


# --- 2. live parity with transformers' PIL backend -------------------------------------------------------------


@pytest.mark.parametrize("edge", [32, 224])
def test_clip_matches_transformers_where_floor_and_round_agree(edge):
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]
    for image in images:  # choose only sizes where the crop offsets cannot differ (excess not 3 mod 4)
        assert all((side - edge) % 4 != 3 for side in shortest_edge_size(image.height, image.width, edge))
    ours = VlmhubCLIPImageProcessor(size=edge, crop_size=edge)(images, return_tensors="pt").pixel_values
    theirs = CLIPImageProcessorPil(size={"shortest_edge": edge}, crop_size=edge)(images, return_tensors="pt")
    assert ours.shape == (len(SIZES), 3, edge, edge)
    assert max_diff(ours, theirs.pixel_values) <= 1e-6  # measured 0.0


@pytest.mark.parametrize("kwargs", [{}, {"size": {"height": 32, "width": 48}, "resample": 3, "do_normalize": False}])
def test_vit_matches_transformers(kwargs):
    images = [random_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]  # a batch of different sizes
    ours = VlmhubViTImageProcessor(**kwargs)(images, return_tensors="pt").pixel_values
    theirs = ViTImageProcessorPil(**kwargs)(images, return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    assert max_diff(ours, theirs) <= 1e-6  # measured 0.0


def settings(processor) -> dict:
    return {k: v for k, v in processor.to_dict().items() if k != "image_processor_type"}


def test_defaults_match_transformers():
    assert settings(VlmhubCLIPImageProcessor()) == settings(CLIPImageProcessorPil())
    assert settings(VlmhubViTImageProcessor()) == settings(ViTImageProcessorPil())


def test_input_kinds_give_the_same_pixels(tmp_path):
    image = random_image(40, 50)
    image.save(tmp_path / "a.png")
    hwc = np.array(image)
    processor = VlmhubCLIPImageProcessor(**TINY_CLIP)
    reference = processor(image, return_tensors="pt").pixel_values
    assert reference.shape == (1, 3, 28, 28)
    for variant in (hwc, torch.from_numpy(hwc).permute(2, 0, 1), str(tmp_path / "a.png"), tmp_path / "a.png", [image]):
        assert torch.equal(processor(variant, return_tensors="pt").pixel_values, reference)
    batch = torch.from_numpy(np.stack([hwc, hwc])).permute(0, 3, 1, 2)  # (B, C, H, W) uint8
    assert torch.equal(processor(batch, return_tensors="pt").pixel_values, reference.expand(2, -1, -1, -1))


def test_grey_and_rgba_inputs_match_transformers():
    rgba = np.random.default_rng(1).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    images = [Image.fromarray(rgba), Image.fromarray(rgba[..., 0])]  # RGBA over white, and mode "L"
    ours = VlmhubCLIPImageProcessor(**TINY_CLIP)(images, return_tensors="pt").pixel_values
    theirs = CLIPImageProcessorPil(**TINY_CLIP)(images, return_tensors="pt").pixel_values
    assert max_diff(ours, theirs) <= 1e-6  # measured 0.0


# --- 3. save / load round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs",
    [(VlmhubViTImageProcessor, {"size": {"height": 16, "width": 20}, "resample": 3, "image_mean": [0.1, 0.2, 0.3]}),
     (VlmhubCLIPImageProcessor, {**TINY_CLIP, "do_convert_rgb": False, "rescale_factor": 0.5, "image_std": [1, 2, 3]})],
)
def test_save_and_load_keep_settings_and_outputs(tmp_path, cls, kwargs):
    processor = cls(**kwargs)
    processor.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls and loaded.to_dict() == processor.to_dict()
    assert loaded.to_dict()["image_processor_type"] == cls.__name__
    images = [random_image(30, 45), random_image(50, 21, seed=1)]
    reloaded, original = (p(images, return_tensors="pt").pixel_values for p in (loaded, processor))
    assert torch.equal(reloaded, original)


def test_clip_processor_text_and_images_like_transformers(tmp_path):
    tokenizer = tiny_tokenizer()
    ours = VlmhubCLIPProcessor(image_processor=VlmhubCLIPImageProcessor(**TINY_CLIP), tokenizer=tokenizer)
    theirs = HFCLIPProcessor(image_processor=CLIPImageProcessorPil(**TINY_CLIP), tokenizer=tokenizer)
    images = [Image.open(RAW[1]), random_image(40, 40)]  # offsets agree for these two
    texts = ["a photo of a cat", "dog"]
    out = ours(text=texts, images=images, padding=True, return_tensors="pt")
    ref = theirs(text=texts, images=images, padding=True, return_tensors="pt")
    assert set(out.keys()) == {"input_ids", "attention_mask", "pixel_values"}
    assert out["input_ids"].tolist() == [[2, 3, 4, 2, 5], [6, 0, 0, 0, 0]]
    assert torch.equal(out["attention_mask"], ref["attention_mask"]) and torch.equal(out["input_ids"], ref["input_ids"])
    assert max_diff(out["pixel_values"], ref["pixel_values"]) <= 1e-6  # measured 0.0
    short = ours(text=texts, padding="max_length", truncation=True, max_length=3, return_tensors="pt")
    assert short["input_ids"].tolist() == [[2, 3, 4], [6, 0, 0]] and "pixel_values" not in short
    assert set(ours(images=images, return_tensors="pt").keys()) == {"pixel_values"}
    ours.save_pretrained(tmp_path)
    loaded = VlmhubCLIPProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded.image_processor, VlmhubCLIPImageProcessor)
    assert loaded.image_processor.to_dict() == ours.image_processor.to_dict()


# --- 4. bad input ----------------------------------------------------------------------------------------------


def test_corrupt_file_is_a_value_error_naming_it(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"definitely not a png \x00\x01\x02" * 10)
    for processor in (VlmhubCLIPImageProcessor(), VlmhubViTImageProcessor()):
        with pytest.raises(ValueError, match=r"x\.png"):
            processor([str(RAW[0]), str(bad)], return_tensors="pt")


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((20, 30, 2), np.uint8), "no channel axis of size 1, 3 or 4"),
     (torch.zeros(2, 20, 30, dtype=torch.uint8), "no channel axis of size 1, 3 or 4"),
     (np.zeros((1, 2, 20, 30, 3), np.uint8), r"got shape \(1, 2, 20, 30, 3\)"),
     (torch.zeros(1, 2, 3, 20, 30, dtype=torch.uint8), r"got shape \(1, 2, 3, 20, 30\)")],
)
def test_bad_arrays_give_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        VlmhubCLIPImageProcessor()(bad, return_tensors="pt")


def test_unsupported_size_dict_and_grey_without_conversion():
    with pytest.raises(ValueError, match="1 channels but mean/std have 3/3"):
        VlmhubViTImageProcessor()(Image.new("L", (8, 8)), return_tensors="pt")  # do_convert_rgb is off, as in transformers
    with pytest.raises(ValueError, match="shortest_edge"):
        VlmhubViTImageProcessor(size={"max_height": 8, "max_width": 8})(random_image(8, 8), return_tensors="pt")
