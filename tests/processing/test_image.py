"""Unit tests of the pure image functions: crop offsets, resize sizes, padding, tensors, loading."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmhub.processing.image import (
    center_crop,
    convert_rgb,
    crop_offset,
    load_image,
    normalize,
    pil_to_tensor,
    rescale,
    resize_shortest_edge,
    shortest_edge_size,
    to_pil,
    to_tensor,
)

CLIP_BUNDLE = Path(__file__).parents[1] / "fixtures" / "openai-clip"


def random_image(height, width, seed=0, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8))


# --- crop offset: torchvision's round-half-to-even, not transformers' floor ------------------------------------


@pytest.mark.parametrize(
    "in_size, out_size, expected",
    [(28, 28, 0), (29, 28, 0), (30, 28, 1), (31, 28, 2), (33, 28, 2), (34, 28, 3), (35, 28, 4), (39, 28, 6)],
)
def test_crop_offset_rounds_half_to_even(in_size, out_size, expected):
    # 29->0.5->0, 31->1.5->2, 33->2.5->2, 35->3.5->4, 39->5.5->6: banker's rounding, as int(round(x)) in Python
    assert crop_offset(in_size, out_size) == expected


def test_crop_offset_differs_from_floor_exactly_when_excess_is_3_mod_4():
    for excess in range(40):
        floor = excess // 2
        assert crop_offset(28 + excess, 28) == floor + (excess % 4 == 3)


def test_crop_offset_pads_floor_half_before_when_window_is_larger():
    assert [crop_offset(n, 8) for n in (7, 6, 5, 4)] == [0, -1, -1, -2]  # torchvision: left pad (8 - n) // 2


# --- shortest-edge resize --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, size, expected",
    [((40, 50), 28, (28, 35)), ((96, 64), 28, (42, 28)), ((30, 100), 28, (28, 93)), ((100, 30), 28, (93, 28)),
     ((28, 28), 28, (28, 28)), ((7, 9), 28, (28, 36)), ((480, 640), 224, (224, 298))],
)
def test_shortest_edge_size_truncates_the_long_side(hw, size, expected):
    assert shortest_edge_size(*hw, size) == expected
    short, long = min(hw), max(hw)
    assert max(expected) == math.floor(size * long / short)  # never rounded up (93.33 -> 93, 298.67 -> 298)


def test_resize_shortest_edge_matches_the_bundle_geometry():
    manifest = json.loads((CLIP_BUNDLE / "manifest.json").read_text())
    for record in manifest["raw"]["preprocess_geometry"]:
        width, height = record["raw_size_wh"]
        resized = resize_shortest_edge(random_image(height, width), 28)
        assert list(resized.size) == record["resized_wh"]
        assert crop_offset(resized.height, 28) == record["crop_top"]
        assert crop_offset(resized.width, 28) == record["crop_left"]


# --- centre crop on PIL and tensors, with zero padding ---------------------------------------------------------


def torchvision_style_crop(pixels, height, width):
    """Reference written from torchvision's CenterCrop rule: pad (floor before, ceil after), then round."""
    in_h, in_w = pixels.shape[-2:]
    pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
    padded = torch.nn.functional.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    top = int(round((padded.shape[-2] - height) / 2.0))
    left = int(round((padded.shape[-1] - width) / 2.0))
    return padded[..., top : top + height, left : left + width]


@pytest.mark.parametrize("in_hw", [(35, 28), (28, 35), (10, 13), (3, 4), (8, 3), (1, 1)])
@pytest.mark.parametrize("out_hw", [(28, 28), (6, 6), (4, 9), (1, 2)])
def test_center_crop_pil_and_tensor_match_torchvision_rule(in_hw, out_hw):
    image = random_image(*in_hw)
    expected = torchvision_style_crop(pil_to_tensor(image), *out_hw)
    assert torch.equal(pil_to_tensor(center_crop(image, out_hw)), expected)
    assert torch.equal(center_crop(pil_to_tensor(image), out_hw), expected)
    assert torch.equal(center_crop(pil_to_tensor(image)[None].float(), out_hw), expected[None].float())  # batched


def test_center_crop_pads_with_zeros_when_crop_exceeds_image():
    pixels = torch.full((3, 3, 4), 7, dtype=torch.uint8)
    out = center_crop(pixels, (6, 6))
    assert out.shape == (3, 6, 6)
    assert (out[:, 1:4, 1:5] == 7).all() and out.sum() == 7 * pixels.numel()  # placed at (1, 1), zeros around
    pil_out = pil_to_tensor(center_crop(to_pil(pixels), (6, 6)))
    assert torch.equal(pil_out, out)


def test_center_crop_on_image_0_starts_at_column_4():
    pixels = torch.arange(35).expand(3, 28, 35)
    assert center_crop(pixels, (28, 28))[0, 0, 0] == 4  # transformers' floor would give 3


# --- tensors ---------------------------------------------------------------------------------------------------


def test_to_tensor_and_rescale_agree_for_every_uint8_value():
    levels = torch.arange(256, dtype=torch.uint8).reshape(16, 16, 1).expand(16, 16, 3).contiguous()
    as_tensor = to_tensor(levels)
    assert as_tensor.shape == (3, 16, 16) and as_tensor.dtype == torch.float32
    assert torch.equal(as_tensor, levels.permute(2, 0, 1).float() / 255)  # torchvision ToTensor
    assert torch.equal(rescale(levels.permute(2, 0, 1), 1 / 255), as_tensor)  # float64 product == float32 quotient
    assert torch.equal(to_tensor(to_pil(levels.numpy())), as_tensor)


def test_normalize_per_channel_and_rejects_wrong_channel_count():
    pixels = torch.ones(3, 2, 2)
    out = normalize(pixels, [0.5, 0.0, 1.0], [0.5, 2.0, 1.0])
    assert out[:, 0, 0].tolist() == [1.0, 0.5, 0.0]
    assert torch.equal(normalize(pixels, 0.5, 0.5), torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="1 channels but mean/std have 3/3"):
        normalize(torch.ones(1, 2, 2), [0.5] * 3, [0.5] * 3)


# --- inputs ----------------------------------------------------------------------------------------------------


def test_to_pil_reads_tensor_chw_and_array_hwc_alike():
    image = random_image(5, 7)
    hwc = np.array(image)
    for variant in (hwc, torch.from_numpy(hwc).permute(2, 0, 1), hwc.transpose(2, 0, 1), hwc.astype(np.int64)):
        assert np.array_equal(np.asarray(to_pil(variant)), hwc)
    assert to_pil(hwc[..., 0]).mode == "L" and to_pil(hwc[..., :1]).mode == "L"


@pytest.mark.parametrize(
    "bad, message",
    [(np.zeros((5, 7, 2), np.uint8), "no channel axis of size 1, 3 or 4"),
     (np.zeros((1, 1, 5, 7, 3), np.uint8), "2 or 3 dimensions"),
     (np.zeros((5, 7, 3), np.float32), "expected uint8"),
     (np.full((5, 7, 3), 300), "expected uint8")],
)
def test_to_pil_rejects_unclear_inputs(bad, message):
    with pytest.raises(ValueError, match=message):
        to_pil(bad)


def test_load_image_from_path_bytes_and_pil(tmp_path):
    image = random_image(6, 9, mode="RGBA")
    path = tmp_path / "rgba.png"
    image.save(path)
    from_path, from_bytes = load_image(path), load_image(path.read_bytes())
    assert from_path.mode == from_bytes.mode == "RGB" and from_path.size == (9, 6)
    assert np.array_equal(np.asarray(from_path), np.asarray(image)[..., :3])
    assert load_image(str(path)).mode == "RGB" and load_image(image).mode == "RGB"


def test_load_image_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png at all")
    with pytest.raises(ValueError, match=r"x\.png"):
        load_image(bad)
    buffer = io.BytesIO()
    random_image(32, 32).save(buffer, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[:-40])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        load_image(str(truncated))
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_convert_rgb_composites_transparency_onto_white():
    pixels = np.zeros((2, 2, 4), np.uint8)
    pixels[0, 0] = (10, 20, 30, 255)  # opaque stays, transparent black becomes white
    rgb = np.asarray(convert_rgb(Image.fromarray(pixels)))
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [255, 255, 255]
