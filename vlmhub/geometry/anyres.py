"""LLaVA-NeXT AnyRes: grid choice, resize-and-pad geometry, unpadding and token counts.

Sizes are (height, width) throughout, as transformers' LlavaNext uses them; the original LLaVA code writes
(width, height) — conversion from it swaps the grid pinpoints.
"""

import math

Size = tuple[int, int]


def select_best_resolution(size: Size, pinpoints: list[Size]) -> Size:
    """The pinpoint (h, w) that keeps the most image pixels after an aspect-preserving fit, then wastes the least."""
    h, w = size
    best, best_effective, best_waste = None, -1, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / w, ph / h)
        effective = min(int(w * scale) * int(h * scale), w * h)
        waste = ph * pw - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (ph, pw), effective, waste
    return best


def grid_shape(size: Size, pinpoints: list[Size], crop: int) -> Size:
    """(rows, cols) of crop x crop tiles covering the best resolution for an image of `size`."""
    ph, pw = select_best_resolution(size, pinpoints)
    return ph // crop, pw // crop


def fit_within(size: Size, target: Size) -> Size:
    """(h, w) of `size` scaled to fit `target` without distortion (ceil, capped), as both LLaVA and transformers do."""
    h, w = size
    th, tw = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def unpadded_shape(size: Size, feature_shape: Size) -> tuple[int, int, int, int]:
    """Rows and columns of a (rows, cols) feature map that hold the image rather than its letterbox padding.

    Returns (top, bottom, left, right) slice bounds. An odd padding keeps one more row (or column) than the exact
    image extent, as both implementations do. The original LLaVA truncates h * scale; transformers rounds it to 7
    decimals first, which only differs when float error lands just under an integer (e.g. 6.9999999 -> 6 vs 7).
    We follow transformers.
    """
    h, w = size
    fh, fw = feature_shape
    if w / h > fw / fh:  # wider than the feature map: padding on top and bottom
        new_h = int(round(h * (fw / w), 7))
        pad = (fh - new_h) // 2
        return pad, fh - pad, 0, fw
    new_w = int(round(w * (fh / h), 7))
    pad = (fw - new_w) // 2
    return 0, fh, pad, fw - pad


def anyres_num_tokens(size: Size, pinpoints: list[Size], crop: int, side: int, merge: str = "spatial_unpad") -> int:
    """Visual tokens of one image under AnyRes: the base view (side*side), then the grid's features.

    `side` is the feature-map side of one crop (crop // patch, // pooling stride). merge: "flat" (crops one after
    another), "spatial" (row-major over the whole grid), "spatial_unpad" (unpadded, one newline token per row).
    """
    rows, cols = grid_shape(size, pinpoints, crop)
    if merge != "spatial_unpad":
        return side * side * (1 + rows * cols)
    top, bottom, left, right = unpadded_shape(size, (rows * side, cols * side))
    return side * side + (bottom - top) * (right - left + 1)
