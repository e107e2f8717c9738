"""Tiling geometry of Llama 3.2 Vision: which grid of tiles an image gets, how it is resized and padded, how it is cut.

Pure functions on sizes (and one on arrays), the same decisions as Meta's VariableSizeImageTransform and
transformers' MllamaImageProcessor:

1. Canvases are all (rows * tile, cols * tile) with rows * cols <= max_tiles.
2. The canvas is the one that needs the least upscaling (smallest scale >= 1, scale = the limiting side's factor);
   if every canvas needs downscaling, the one that downscales least; ties go to the smallest area.
3. The image is resized without distortion to fit that canvas, but never upscaled beyond what makes its limiting
   side reach one tile (so a small image grows to one tile side, a mid-size one keeps its size).
4. It is pasted at the top-left of the canvas (padding right and bottom) and cut row-major into tiles.

Sizes are (height, width); grids are (rows, cols) like transformers' aspect ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..configuration.mllama import supported_aspect_ratios


@dataclass(frozen=True)
class TilePlan:
    grid: tuple[int, int]  # (rows, cols) of tiles
    resized: tuple[int, int]  # (height, width) of the image after resizing
    tile_size: int

    @property
    def canvas(self) -> tuple[int, int]:
        return self.grid[0] * self.tile_size, self.grid[1] * self.tile_size

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]


def tile_grids(max_tiles: int) -> list[tuple[int, int]]:
    """All (rows, cols) with rows * cols <= max_tiles, in aspect-ratio-id order (id = index + 1)."""
    return [tuple(g) for g in supported_aspect_ratios(max_tiles)]


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"image has no pixels ({width}x{height}); every image needs at least 1x1 pixel")


def best_grid(height: int, width: int, tile_size: int, max_tiles: int) -> tuple[int, int]:
    """The (rows, cols) canvas of step 2. Scales are float64 divisions like transformers' (Meta: float32)."""
    _check_size(height, width)
    if max_tiles < 1 or tile_size < 1:
        raise ValueError(f"max_tiles ({max_tiles}) and tile_size ({tile_size}) must be positive")
    grids = tile_grids(max_tiles)
    scales = [min(r * tile_size / height, c * tile_size / width) for r, c in grids]
    upscales = [s for s in scales if s >= 1]
    chosen = min(upscales) if upscales else max(scales)
    candidates = [g for g, s in zip(grids, scales) if s == chosen]
    return min(candidates, key=lambda g: g[0] * g[1])  # first of the smallest area, as argmin


def fit_size(height: int, width: int, grid: tuple[int, int], tile_size: int) -> tuple[int, int]:
    """(height, width) after step 3 for the canvas of `grid`: each side is first clamped to [tile_size, canvas side],
    then the image is scaled by the smaller of the two factors (the other side floored, at least 1 px). The float
    arithmetic is Meta's and transformers' on purpose: floor(600 * (560 / 800)) must land where theirs does."""
    _check_size(height, width)
    canvas_h, canvas_w = grid[0] * tile_size, grid[1] * tile_size
    target_h = min(max(height, tile_size), canvas_h)
    target_w = min(max(width, tile_size), canvas_w)
    scale_h, scale_w = target_h / height, target_w / width
    if scale_w < scale_h:
        return min(math.floor(height * scale_w) or 1, target_h), target_w
    return target_h, min(math.floor(width * scale_h) or 1, target_w)


def plan_tiles(height: int, width: int, tile_size: int, max_tiles: int) -> TilePlan:
    grid = best_grid(height, width, tile_size, max_tiles)
    return TilePlan(grid=grid, resized=fit_size(height, width, grid, tile_size), tile_size=tile_size)


def aspect_ratio_id(grid: tuple[int, int], max_tiles: int) -> int:
    """1-based index of `grid` among tile_grids(max_tiles); 0 is reserved for "no image"."""
    grids = tile_grids(max_tiles)
    if tuple(grid) not in grids:
        raise ValueError(f"grid {tuple(grid)} is not one of the supported grids {grids}")
    return grids.index(tuple(grid)) + 1


def pad_bottom_right(image: np.ndarray, canvas: tuple[int, int], value=0) -> np.ndarray:
    """(..., h, w) -> (..., H, W) with the image at the top-left and `value` elsewhere."""
    h, w = image.shape[-2:]
    H, W = canvas
    if h > H or w > W:
        raise ValueError(f"image {h}x{w} does not fit the canvas {H}x{W}")
    out = np.full((*image.shape[:-2], H, W), value, dtype=image.dtype)
    out[..., :h, :w] = image
    return out


def split_tiles(canvas: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(C, rows * t, cols * t) -> (rows * cols, C, t, t), row-major (tile k = row k // cols, column k % cols)."""
    C, H, W = canvas.shape
    rows, cols = grid
    if H % rows or W % cols:
        raise ValueError(f"canvas {H}x{W} does not split into a {rows}x{cols} grid")
    t_h, t_w = H // rows, W // cols
    tiles = canvas.reshape(C, rows, t_h, cols, t_w).transpose(1, 3, 0, 2, 4)  # (rows, cols, C, t, t)
    return np.ascontiguousarray(tiles).reshape(rows * cols, C, t_h, t_w)
