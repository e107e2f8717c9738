"""CLIP preprocessing: OpenAI's transform (bicubic short-side resize, torchvision centre crop, CLIP mean/std).

Same arguments and defaults as transformers' `CLIPImageProcessor`, with one deliberate difference: the centre
crop rounds its offset half to even like torchvision (see `vlmhub.processing.image.crop_offset`), which is what
OpenAI's `clip.load(...)[1]` does. transformers floors it, and lands one pixel to the left or top whenever
(resized - crop) is 3 mod 4, e.g. a 50x40 image at 28 px.
"""

from __future__ import annotations

from transformers.processing_utils import ProcessorMixin

from .base import TransformersFormatMixin
from .image import BICUBIC, ResizeCropImageProcessor

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # statistics of OpenAI's training set, from clip/clip.py
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class VlmhubCLIPImageProcessor(TransformersFormatMixin, ResizeCropImageProcessor):
    """Resize the short side to 224 (bicubic), centre crop 224x224, rescale, normalise with CLIP's statistics.

    Keyword arguments (each overrides the class default below, also per call in `__call__`): do_resize, size,
    resample, do_center_crop, crop_size, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
    do_convert_rgb. An int `size` means the shortest edge (`default_to_square = False`), as in transformers.
    """

    do_resize = True
    size = {"shortest_edge": 224}
    default_to_square = False
    resample = BICUBIC
    do_center_crop = True
    crop_size = {"height": 224, "width": 224}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True


class VlmhubCLIPProcessor(TransformersFormatMixin, ProcessorMixin):
    """Pairs a `VlmhubCLIPImageProcessor` with any transformers tokenizer, like transformers' `CLIPProcessor`.

    `processor(text=..., images=..., padding=..., truncation=..., max_length=..., return_tensors="pt")` returns
    `input_ids` and `attention_mask` from the tokenizer and `pixel_values` from the image processor; the
    generic `ProcessorMixin.__call__` routes each keyword to the part that accepts it.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)


__all__ = ["VlmhubCLIPImageProcessor", "VlmhubCLIPProcessor"]
