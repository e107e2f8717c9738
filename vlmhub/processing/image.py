"""Image preprocessing shared by the image processors: load, resize, crop, rescale, normalise.

The geometry follows torchvision's PIL transforms, because the original checkpoints (OpenAI CLIP, timm, LLaVA)
were trained with them and transformers differs in one place: `center_crop` takes the *floor* of the offset,
torchvision rounds it (half to even). A 35 px wide image cropped to 28 px starts at column 4 in torchvision
and at column 3 in transformers, which shifts every pixel and breaks parity with OpenAI's outputs. We round,
like the originals.

Resizing is done by Pillow on 8-bit images (as both torchvision and transformers' PIL backend do), so the
pixel-level functions take PIL images; crop, rescale and normalise also take torch tensors (..., C, H, W).

The tiling processors (Mllama, LLaVA-NeXT AnyRes) write their float32 output once, in place: `pixel_planes` takes
the 8-bit channels out of PIL, a `LevelMap` turns levels into rescaled and normalised values (bit-identical to the two
steps), and `write_tiles` cuts a black-padded canvas into tiles without building it.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

BICUBIC = Image.Resampling.BICUBIC
BILINEAR = Image.Resampling.BILINEAR
_CHANNEL_COUNTS = (1, 3, 4)  # grey, RGB, RGBA: what Pillow can hold and the processors accept


def load_image(source: str | os.PathLike | bytes | Image.Image) -> Image.Image:
    """Open a path, encoded bytes or PIL image as an RGB image, applying the EXIF rotation like transformers."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ValueError(f"URLs are not fetched; download {source!r} and pass the file or bytes")
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    data = source if isinstance(source, bytes) else Path(name).read_bytes()  # a missing file: FileNotFoundError
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now, so a truncated file fails here and not later inside a resize
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for bad data
        raise ValueError(f"cannot read image {name!r}: not an image or corrupt ({err})") from err


def convert_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of `image`; transparency is composited onto white (transformers' `do_convert_rgb` rule)."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_pil(image: Image.Image | np.ndarray | torch.Tensor) -> Image.Image:
    """PIL image from a PIL image, a uint8 tensor (C, H, W) or a uint8 array (H, W, C); 2-D means grey."""
    if isinstance(image, Image.Image):
        return image
    is_tensor = isinstance(image, torch.Tensor)
    array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    if array.ndim == 3:
        array = np.moveaxis(array, _channel_axis(array.shape, prefer_first=is_tensor), -1)
    elif array.ndim != 2:
        raise ValueError(f"an image must have 2 or 3 dimensions, got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            # floats are ambiguous ([0, 1] or [0, 255]) and Pillow resamples 8-bit data only
            raise ValueError(f"expected uint8 pixels in 0..255, got {array.dtype}; scale to 0..255 and cast to uint8")
        array = array.astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _channel_axis(shape: tuple[int, ...], prefer_first: bool) -> int:
    """Axis holding the channels: tensors are (C, H, W) like torchvision, arrays (H, W, C) like np.array(img)."""
    axes = (0, 2) if prefer_first else (2, 0)
    for axis in axes:
        if shape[axis] in _CHANNEL_COUNTS:
            return axis
    layout = "(C, H, W)" if prefer_first else "(H, W, C)"
    raise ValueError(f"image of shape {tuple(shape)} has no channel axis of size 1, 3 or 4; expected {layout}")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the short side = size and the long side truncated, as torchvision's Resize(int)."""
    short, long = min(height, width), max(height, width)
    new_long = int(size * long / short)  # truncation, not rounding: 30x100 at 28 -> 28x93 (93.3)
    return (size, new_long) if height <= width else (new_long, size)


def resize_shortest_edge(image: Image.Image, size: int, resample: int = BICUBIC) -> Image.Image:
    """Resize so the short side is `size`, keeping the aspect ratio (torchvision `Resize(size)` on PIL)."""
    return resize(image, shortest_edge_size(image.height, image.width, size), resample)


def resize(image: Image.Image, size: tuple[int, int], resample: int = BILINEAR) -> Image.Image:
    """Resize to (height, width) with Pillow, which antialiases when shrinking (as torchvision on PIL does)."""
    height, width = size
    return image.resize((width, height), resample=resample)


def crop_offset(in_size: int, out_size: int) -> int:
    """Where a centred window of `out_size` starts; negative means the image is padded on that side.

    torchvision rounds (in - out) / 2 half to even (3.5 -> 4, 2.5 -> 2); transformers floors it (3.5 -> 3).
    When the window is larger, torchvision pads floor(d / 2) before and the rest after.
    """
    if out_size > in_size:
        return -((out_size - in_size) // 2)
    return int(round((in_size - out_size) / 2.0))


def center_crop(image: Image.Image | torch.Tensor, size: tuple[int, int]) -> Image.Image | torch.Tensor:
    """Centre crop to (height, width) with torchvision's offsets, padding with zeros where the image is smaller."""
    height, width = size
    if isinstance(image, Image.Image):
        top, left = crop_offset(image.height, height), crop_offset(image.width, width)
        return image.crop((left, top, left + width, top + height))  # Pillow fills outside the image with 0
    in_height, in_width = image.shape[-2:]
    top, left = crop_offset(in_height, height), crop_offset(in_width, width)
    out = image.new_zeros((*image.shape[:-2], height, width))
    rows = slice(max(top, 0), min(top + height, in_height))
    cols = slice(max(left, 0), min(left + width, in_width))
    out[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left] = image[..., rows, cols]
    return out


def pil_to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """(C, H, W) tensor holding the pixels of a PIL image or (H, W[, C]) array unchanged (uint8 stays uint8)."""
    array = np.asarray(image)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 (C, H, W) in [0, 1] from a PIL image or uint8 (H, W, C) pixels, as torchvision's `ToTensor`."""
    return pil_to_tensor(image).float().div(255)


def rescale(pixels: torch.Tensor, factor: float) -> torch.Tensor:
    """float32 pixels * factor, computed in float64 like transformers (for 1/255 this equals ToTensor exactly)."""
    return (pixels.double() * factor).float()


def normalize(pixels: torch.Tensor, mean: float | list[float], std: float | list[float]) -> torch.Tensor:
    """(pixels - mean) / std per channel of a (..., C, H, W) float tensor, in float32 like torchvision."""
    mean_t = torch.as_tensor(mean, dtype=pixels.dtype).reshape(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=pixels.dtype).reshape(-1, 1, 1)
    channels = pixels.shape[-3]
    if mean_t.numel() not in (1, channels) or std_t.numel() not in (1, channels):
        raise ValueError(f"image has {channels} channels but mean/std have {mean_t.numel()}/{std_t.numel()} values")
    return (pixels - mean_t) / std_t


def pixel_planes(image: Image.Image) -> Iterator[np.ndarray]:
    """The channels of a PIL image as (H, W) uint8 arrays (read-only), one at a time. For RGB, Pillow packs each
    band on its own when asked: contiguous planes, no copy of ours, faster than packing RGB and transposing, and only
    one band held at once (a 2000x500 band is 1 MB of new memory, and new memory costs page faults)."""
    if image.mode == "RGB":
        shape = (image.height, image.width)
        yield from (np.frombuffer(image.tobytes("raw", band), dtype=np.uint8).reshape(shape) for band in "RGB")
        return
    pixels = np.asarray(image)
    yield from [pixels] if pixels.ndim == 2 else (pixels[..., c] for c in range(pixels.shape[-1]))


def level_table(do_rescale: bool, factor: float, do_normalize: bool, mean, std, channels: int = 3) -> torch.Tensor:
    """(channels, 256) float32: the value each 8-bit level becomes through `rescale` then `normalize` (these very
    functions, so anything that reproduces the table is bit-identical to the two steps); level 0 is black."""
    levels = torch.arange(256, dtype=torch.uint8).expand(channels, 1, 256)  # (C, 1, 256) as a (C, H, W) image
    values = rescale(levels, factor) if do_rescale else levels.float()
    values = normalize(values, mean, std) if do_normalize else values
    return values[:, 0].contiguous()


class LevelMap:
    """Writes 8-bit channel planes as the float32 values of `level_table` into an output view (C, h, w).

    Each output value depends only on its pixel's level, so any elementwise computation that gives the table on all
    256 levels gives the two-step result bit for bit. Three float32 operations after the exact uint8 -> float32 cast,
    (x / divisor - mean) / std, usually do (each is one correctly rounded IEEE operation, the same in numpy's
    vectorised and scalar loops); that is checked here on every level, through both a contiguous and a strided
    layout, and they are used when they agree: about 3x faster than a lookup. Otherwise the table is looked up.
    The cast rides in the first division (numpy casts in the ufunc's buffered loop), and one channel is finished
    before the next, so a tile's plane (1.2 MB at 560 px) stays in cache for all three steps.
    """

    def __init__(self, do_rescale: bool, factor: float, do_normalize: bool, mean, std, channels: int = 3):
        self.table = level_table(do_rescale, factor, do_normalize, mean, std, channels)  # (C, 256)
        self.divisor = np.float32(_divisor(factor) if do_rescale and factor else 1.0)  # factor 0: the check fails
        self.mean = np.broadcast_to(np.float32(mean), channels) if do_normalize else None  # one per channel
        self.std = np.broadcast_to(np.float32(std), channels) if do_normalize else None
        self.arithmetic = self._reproduces_table()

    def _compute(self, c: int, plane: np.ndarray, values: np.ndarray, left: int) -> None:
        image = values[:, left : left + plane.shape[1]]
        np.divide(plane, self.divisor, out=image, dtype=np.float32, casting="unsafe")  # exact cast, then / divisor
        values[:, :left] = values[:, left + plane.shape[1] :] = 0  # level 0 (black) on both sides: 0 / divisor = 0
        if self.mean is not None:
            np.subtract(values, self.mean[c], out=values)
            np.divide(values, self.std[c], out=values)

    def _reproduces_table(self) -> bool:
        levels = np.arange(256, dtype=np.uint8)[None].repeat(2, axis=0)  # (2, 256)
        for c, expected in enumerate(self.table.numpy()[:, None]):  # (1, 256) each
            dense, strided = np.empty((1, 256), np.float32), np.empty((1, 512), np.float32)[:, ::2]
            self._compute(c, levels[:1], dense, 0)
            self._compute(c, levels.T.reshape(1, 512)[:, ::2], strided, 0)  # non-contiguous: the scalar loops
            if not (np.array_equal(dense, expected) and np.array_equal(strided, expected)):
                return False
        return True

    def write_channel(self, c: int, plane: np.ndarray, values: np.ndarray, left: int = 0) -> None:
        """values (h, W) float32 (a view, written in place) <- channel c's values of a uint8 plane (h, w) in columns
        [left, left + w), the value of black in the other columns (none when w == W)."""
        if self.arithmetic:  # the padding columns go through the arithmetic too: whole rows are faster than parts
            self._compute(c, plane, values, left)
            return
        table = self.table.numpy()[c]
        np.take(table, plane, out=values[:, left : left + plane.shape[1]], mode="clip")  # uint8 is in range
        values[:, :left] = values[:, left + plane.shape[1] :] = table[0]

    def write(self, planes, out: torch.Tensor, left: int = 0) -> None:
        """out (C, h, W) float32 (a view, written in place) <- C uint8 planes (h, w), as `write_channel` does."""
        for c, (plane, values) in enumerate(zip(planes, out.numpy())):
            self.write_channel(c, plane, values, left)


@functools.lru_cache(maxsize=32)
def _cached_level_map(do_rescale, factor, do_normalize, mean, std, channels) -> LevelMap:
    return LevelMap(do_rescale, factor, do_normalize, mean, std, channels)


def level_map(do_rescale: bool, factor: float, do_normalize: bool, mean, std, channels: int = 3) -> LevelMap:
    """The LevelMap of these settings, built once per process: building one checks all 256 levels (0.3 ms, a tenth
    of tiling a 2000x500 image). A LevelMap is never written after it is built, so processor calls share it."""
    return _cached_level_map(bool(do_rescale), factor, bool(do_normalize), _hashable(mean), _hashable(std), channels)


def _hashable(value):
    """Lists and arrays of numbers -> tuples; numbers and None as they are."""
    return tuple(np.ravel(value).tolist()) if value is not None and np.ndim(value) else value


def _divisor(factor: float) -> float:
    """1 / factor, as the integer it is meant to be when close to one (1/255 -> 255.0, so x / 255 is one rounding)."""
    inverse = 1.0 / factor
    return float(round(inverse)) if abs(inverse - round(inverse)) < 1e-9 * inverse else inverse


# glibc's mmap threshold grows with the blocks a process frees but never past 32 MiB (on 64-bit): larger blocks are
# always new mappings, whose pages the OS hands out zeroed when first touched.
_ALWAYS_MAPPED_BYTES = 32 * 2**20


def tile_array(shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """(float32 array of `shape`, whether it is already zero) for tiles written in place, where absent tiles must be
    zero. Above 32 MiB, np.zeros is free (fresh pages) and absent tiles need no writing; below, a block is usually
    reused heap memory that np.zeros would clear in full before the tiles overwrite it, so it comes uncleared and
    the caller writes zeros only where no tile goes."""
    zeroed = int(np.prod(shape)) * 4 > _ALWAYS_MAPPED_BYTES
    return (np.zeros if zeroed else np.empty)(shape, dtype=np.float32), zeroed


def write_tiles(out: torch.Tensor, image: Image.Image, grid: tuple[int, int], offset: tuple[int, int],
                levels: LevelMap) -> None:
    """Paste an 8-bit `image` at `offset` (top, left) on a black canvas of `grid` (rows, cols) tiles of side t, and
    write the canvas cut row-major into out[:rows * cols] (tiles, C, t, t) float32 through `levels`, one channel at a
    time. Each value is written once: the rows holding image pixels through the level map (black on either side), the
    other rows with the value of black."""
    rows, cols = grid
    t, (top, left), (h, w) = out.shape[-1], offset, (image.height, image.width)
    tiles = out[: rows * cols].numpy()  # the same memory
    for ch, plane in enumerate(pixel_planes(image)):
        black = levels.table[ch, 0].item()
        for r in range(rows):
            for c in range(cols):
                tile = tiles[r * cols + c, ch]  # (t, t)
                y0, y1 = min(max(top - r * t, 0), t), min(max(top + h - r * t, 0), t)  # rows holding image pixels
                x0, x1 = min(max(left - c * t, 0), t), min(max(left + w - c * t, 0), t)
                if y0 >= y1 or x0 >= x1:
                    tile[:] = black
                    continue
                sy, sx = r * t - top, c * t - left  # tile coordinates -> image coordinates
                levels.write_channel(ch, plane[y0 + sy : y1 + sy, x0 + sx : x1 + sx], tile[y0:y1], left=x0)
                tile[:y0] = tile[y1:] = black


def rescale_normalize(image: Image.Image, factor: float, mean, std, out: torch.Tensor | None = None) -> torch.Tensor:
    """normalize(rescale(pixels)) of an 8-bit image through a `LevelMap` (built once per setting, `level_map`): the
    same float32 values as the two steps, several times faster on large crops. Writes into `out` (C, H, W) float32
    when given, so batches are filled in place."""
    channels = len(image.getbands())
    out = torch.empty(channels, image.height, image.width) if out is None else out
    level_map(True, factor, True, mean, std, channels=channels).write(pixel_planes(image), out)
    return out


# --- the transformers-compatible processor built from the functions above -------------------------------------


def resized_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
    """(height, width) after resizing for a size dict: {"shortest_edge": n} or {"height": h, "width": w}."""
    if size.shortest_edge and not size.longest_edge:
        return shortest_edge_size(height, width, size.shortest_edge)
    if size.height and size.width:
        return size.height, size.width
    raise ValueError(f"size must be {{'shortest_edge': n}} or {{'height': h, 'width': w}}, got {dict(size)}")


def resize_to_size_dict(image: Image.Image, size: SizeDict, resample: int) -> Image.Image:
    """Resize for a transformers size dict: {"shortest_edge": n} or {"height": h, "width": w}."""
    return resize(image, resized_size(image.height, image.width, size), resample)


def preprocess_image(
    image: Image.Image, *, do_resize, size, resample, do_center_crop, crop_size, do_rescale, rescale_factor,
    do_normalize, image_mean, image_std, out: torch.Tensor | None = None, **unused,
) -> torch.Tensor:
    """The whole pipeline for one image, with the resolved arguments of a processor call: (C, H, W) float32
    (written into `out` when given and the image is rescaled and normalised)."""
    if do_resize:
        image = resize_to_size_dict(image, size, resample)
    if do_center_crop:
        image = center_crop(image, (crop_size.height, crop_size.width))
    if do_rescale and do_normalize:
        return rescale_normalize(image, rescale_factor, image_mean, image_std, out=out)
    pixels = pil_to_tensor(image)
    pixels = rescale(pixels, rescale_factor) if do_rescale else pixels.float()
    return normalize(pixels, image_mean, image_std) if do_normalize else pixels


class ResizeCropImageProcessor(BaseImageProcessor):
    """convert RGB -> resize -> centre crop -> rescale -> normalise, each step one function of this module.

    Subclasses only set class-attribute defaults, as transformers' processors do, so `save_pretrained`,
    `from_pretrained`, `to_dict` and argument validation come from `BaseImageProcessor` unchanged. We derive
    from `BaseImageProcessor` rather than `PilBackend` so that none of transformers' numpy resize / floor-offset
    crop is inherited: every pixel operation here is ours.
    """

    def __init__(self, **kwargs: Unpack[ImagesKwargs]):
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)  # BaseImageProcessor leaves this to the backend classes

    def fetch_images(self, images):
        """Open paths and bytes with `load_image`, so a bad file is a ValueError that names it."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(image) for image in images]
        if isinstance(images, (str, os.PathLike, bytes)):
            return load_image(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim > 4:
            raise ValueError(f"expected an image (2 or 3 dims) or a batch (4 dims), got shape {tuple(images.shape)}")
        return images

    def process_image(self, image, do_convert_rgb: bool | None = None, **kwargs) -> Image.Image:
        """One raw input as a PIL image, since resizing is done by Pillow."""
        image = to_pil(image)
        return convert_rgb(image) if do_convert_rgb else image

    def _preprocess(self, images: list[Image.Image], return_tensors=None, do_pad=None, **options) -> BatchFeature:
        if do_pad:
            raise ValueError(f"{type(self).__name__} does not pad; resize or crop to a fixed size instead")
        pixel_values = [preprocess_image(image, **options) for image in images]  # each (C, H, W)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)
