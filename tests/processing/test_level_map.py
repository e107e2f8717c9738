"""The shared fast path of the tiling processors: 8-bit levels -> rescaled and normalised float32 values (LevelMap),
channel planes out of PIL, and tiles of a black canvas written in place (write_tiles). Everything must equal the plain
two-step computation bit for bit."""

import numpy as np
import pytest
import torch
from PIL import Image

import vlmhub
from vlmhub.processing import llava
from vlmhub.processing.clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from vlmhub.processing.image import (LevelMap, level_map, normalize, pil_to_tensor, pixel_planes, rescale, tile_array,
                                    write_tiles)

SETTINGS = {
    "clip": (True, 1 / 255, True, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "half": (True, 1 / 255, True, [0.5] * 3, [0.5] * 3),
    "rescale-only": (True, 1 / 255, False, None, None),
    "normalize-only": (False, 1 / 255, True, [100.0, 120.0, 90.0], [60.0, 50.0, 70.0]),
    "odd-factor": (True, 0.0039, True, [0.1] * 3, [0.3] * 3),  # 1 / 0.0039 is not an integer: the lookup
}


def dirty_or_zeroed(zeroed: bool):
    """A stand-in for `image.tile_array`: memory full of NaN (as reused heap memory may hold anything) that the
    processor must overwrite everywhere, or zeros it may leave where no tile goes."""
    return lambda shape: (np.zeros(shape, np.float32), True) if zeroed else (np.full(shape, np.nan, np.float32), False)


def two_steps(pixels: torch.Tensor, do_rescale, factor, do_normalize, mean, std) -> torch.Tensor:
    values = rescale(pixels, factor) if do_rescale else pixels.float()
    return normalize(values, mean, std) if do_normalize else values


def random_image(h, w, seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def test_a_level_map_is_built_once_per_setting():
    clip = level_map(True, 1 / 255, True, list(OPENAI_CLIP_MEAN), np.array(OPENAI_CLIP_STD))
    assert level_map(True, 1 / 255, True, tuple(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)) is clip
    assert level_map(*SETTINGS["half"]) is not clip and level_map(*SETTINGS["rescale-only"]).mean is None
    assert torch.equal(clip.table, LevelMap(*SETTINGS["clip"]).table)


@pytest.mark.parametrize("name", SETTINGS)
def test_level_map_equals_the_two_steps_on_every_level_and_layout(name):
    levels = LevelMap(*SETTINGS[name])
    assert levels.arithmetic == (name != "odd-factor")
    pixels = torch.arange(256, dtype=torch.uint8).reshape(16, 16).expand(3, 16, 16)  # every level, (3, 16, 16)
    expected = two_steps(pixels, *SETTINGS[name])
    out = torch.full((3, 20, 24), 7.0)
    levels.write([p.numpy() for p in pixels], out[:, 2:18, 5:21])  # a strided view of a larger array
    assert torch.equal(out[:, 2:18, 5:21], expected)
    assert (out[:, :2] == 7).all() and (out[:, :, :5] == 7).all() and (out[:, :, 21:] == 7).all()  # nothing else
    assert torch.equal(levels.table[:, 0], expected[:, 0, 0])  # level 0 (black) is the padding value


@pytest.mark.parametrize("name", ["clip", "odd-factor"])  # the arithmetic and the lookup
def test_level_map_writes_black_beside_a_narrower_plane(name):
    levels = LevelMap(*SETTINGS[name])
    pixels = torch.arange(256, dtype=torch.uint8).reshape(16, 16).expand(3, 16, 16)[:, :, :10]  # (3, 16, 10)
    out = torch.full((3, 20, 24), 7.0)
    levels.write([p.numpy() for p in pixels], out[:, 2:18, 4:20], left=3)  # columns 3..12 of 16
    rows = out[:, 2:18, 4:20]
    assert torch.equal(rows[:, :, 3:13], two_steps(pixels, *SETTINGS[name]))
    black = levels.table[:, :1, None].expand(3, 16, 3)  # level 0
    assert torch.equal(rows[:, :, :3], black) and torch.equal(rows[:, :, 13:], black)
    assert (out[:, :2] == 7).all() and (out[:, :, :4] == 7).all() and (out[:, :, 20:] == 7).all()  # nothing else


def test_tile_arrays_come_zeroed_only_where_that_is_free():
    small, zeroed = tile_array((1, 4, 3, 56, 56))
    assert small.shape == (1, 4, 3, 56, 56) and small.dtype == np.float32 and not zeroed  # reused heap: not cleared
    large, zeroed = tile_array((6, 4, 3, 560, 560))  # 90 MB: a fresh mapping
    assert zeroed and not large.any()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pixel_planes_are_the_channels(mode):
    image = random_image(5, 7, mode=mode)
    planes = list(pixel_planes(image))
    assert torch.equal(torch.from_numpy(np.stack(planes)), pil_to_tensor(image))


@pytest.mark.parametrize("grid, offset", [((2, 2), (0, 0)), ((1, 3), (0, 9)), ((2, 1), (5, 3)), ((1, 1), (0, 0))])
def test_write_tiles_equals_a_padded_canvas_cut_into_tiles(grid, offset):
    rows, cols, t = *grid, 8
    image = random_image(min(11, rows * t - offset[0]), min(6, cols * t - offset[1]), seed=1)
    levels = LevelMap(*SETTINGS["clip"])
    pixels = pil_to_tensor(image)  # (3, h, w)
    canvas = torch.zeros(3, rows * t, cols * t, dtype=torch.uint8)  # black
    canvas[:, offset[0] : offset[0] + image.height, offset[1] : offset[1] + image.width] = pixels
    tiles = canvas.reshape(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)  # row-major
    out = torch.full((rows * cols + 1, 3, t, t), 7.0)
    write_tiles(out, image, grid, offset, levels)
    assert torch.equal(out[:-1], two_steps(tiles, *SETTINGS["clip"]))
    assert (out[-1] == 7).all()  # tiles past the grid are left alone


@pytest.mark.parametrize("settings, fast", [
    (dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}), True),
    (dict(size={"height": 28, "width": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=False,
          image_mean=[0.5] * 3, image_std=[0.5] * 3), True),
    (dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, rescale_factor=0.0039), True),
    (dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}), False),  # crops are resized again
])
@pytest.mark.parametrize("zeroed", [False, True], ids=["dirty-memory", "zeroed-memory"])
def test_anyres_crops_written_in_place_equal_the_pil_crops(monkeypatch, settings, fast, zeroed):
    monkeypatch.setattr(llava, "tile_array", dirty_or_zeroed(zeroed))
    pinpoints = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
    processor = vlmhub.LlavaImageProcessor(image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints, **settings)
    images = [random_image(h, w, i) for i, (h, w) in enumerate([(45, 75), (60, 25), (28, 28), (100, 10), (7, 9), (1, 1)])]
    written, write = [], llava.write_anyres_crops
    monkeypatch.setattr(llava, "write_anyres_crops", lambda *args: written.append(1) or write(*args))
    in_place = processor(images, return_tensors="pt")
    assert bool(written) == fast
    monkeypatch.setattr(llava, "crops_pass_unchanged", lambda crop, options: False)  # force the PIL crops
    through_pil = processor(images, return_tensors="pt")
    assert torch.equal(in_place["pixel_values"], through_pil["pixel_values"])
    assert torch.equal(in_place["image_sizes"], through_pil["image_sizes"])
