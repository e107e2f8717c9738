"""Image processor for ViT classifiers: the defaults of transformers' `ViTImageProcessor`, our pixel code."""

from __future__ import annotations

from .base import TransformersFormatMixin
from .image import BILINEAR, ResizeCropImageProcessor


class VlmhubViTImageProcessor(TransformersFormatMixin, ResizeCropImageProcessor):
    """Squash to 224x224 (no crop, aspect ratio not kept), rescale to [0, 1], normalise to [-1, 1].

    Keyword arguments, each overriding the class default below for every call (and per call in `__call__`):
    do_resize, size ({"height", "width"} or {"shortest_edge"}), resample (PIL filter), do_rescale,
    rescale_factor, do_normalize, image_mean, image_std, do_convert_rgb (alpha onto white; off by default, as in
    transformers, so an RGBA or grey input keeps its channels and fails at normalisation).
    `__call__(images, return_tensors="pt")` returns `BatchFeature({"pixel_values": (B, 3, H, W) float32})`.
    """

    do_resize = True
    size = {"height": 224, "width": 224}
    resample = BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]  # Google's ViT checkpoints were trained on pixels in [-1, 1]
    image_std = [0.5, 0.5, 0.5]


__all__ = ["VlmhubViTImageProcessor"]
