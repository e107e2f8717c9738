"""Llama 3.2 Vision preprocessing: tiled images and prompts with `<|image|>` tokens and their cross-attention mask.

`VlmhubMllamaImageProcessor` makes the same pixels as transformers' MllamaImageProcessorPil (and Meta's
VariableSizeImageTransform): geometry from `vlmhub.processing.tiling`, resizing by Pillow. It is faster because it
never builds a float canvas: each tile is written once, straight into the batch array, by `image.write_tiles` through
a `LevelMap` (values bit-identical to rescale then normalize of every 8-bit level, as transformers computes them), the
padding with the value of black and absent tiles with zeros.

`VlmhubMllamaProcessor` pairs it with a tokenizer: one `<|image|>` per image in the text, `<|begin_of_text|>` added
when missing (after leading image tokens, as transformers does), and `cross_attention_mask` (batch, tokens, images,
tiles): each image is seen from its own token up to the next image's token (or the end; consecutive image tokens
all reach to the end of the text that follows them), and only its real tiles.

Both classes' `from_pretrained` also read transformers' mllama folders (MllamaProcessor), giving our classes.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.image_utils import make_nested_list_of_images
from transformers.processing_utils import ImagesKwargs, ProcessorMixin, Unpack

from .base import TransformersFormatMixin
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .image import BILINEAR, LevelMap, convert_rgb, level_map, load_image, tile_array, to_pil, write_tiles
from .tiling import TilePlan, aspect_ratio_id, plan_tiles

IMAGE_TOKEN = "<|image|>"

# Meta's chat format for image + text turns: a header per message, images as <|image|> before their text.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image|>' }}{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


class MllamaImagesKwargs(ImagesKwargs, total=False):
    """max_image_tiles: tiles per image (the grid has at most this many); max_images_per_sample: the limit above
    which a sample is refused."""

    max_image_tiles: int
    max_images_per_sample: int


class VlmhubMllamaImageProcessor(TransformersFormatMixin, BaseImageProcessor):
    """Images (nested per sample) -> pixel_values (B, images, max_image_tiles, 3, tile, tile), aspect_ratio_ids
    (B, images), aspect_ratio_mask (B, images, max_image_tiles), num_tiles (list per sample).

    Defaults are the released models' (560 px tiles, 4 tiles, CLIP mean/std, bilinear). Absent images (samples with
    fewer images than the longest) get id 0, mask [1, 0, ...] and zero pixels; absent tiles are zeros, as in
    transformers and Meta's `_stack_images`.
    """

    valid_kwargs = MllamaImagesKwargs
    model_input_names = ["pixel_values", "num_tiles", "aspect_ratio_ids", "aspect_ratio_mask"]
    do_convert_rgb = True
    do_resize = True
    size = {"height": 560, "width": 560}
    resample = BILINEAR
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_pad = True
    max_image_tiles = 4
    # More images make the cross-attention keys grow by tiles * tokens each; Meta's chat format uses few.
    max_images_per_sample = 8

    def __init__(self, **kwargs: Unpack[MllamaImagesKwargs]):
        super().__init__(**kwargs)
        self._set_attributes(**kwargs)
        self._validate_preprocess_kwargs(**{k: getattr(self, k) for k in self._valid_kwargs_names})

    def _validate_preprocess_kwargs(self, do_resize=None, size=None, do_pad=None, max_image_tiles=None,
                                    max_images_per_sample=None, **kwargs):
        super()._validate_preprocess_kwargs(do_resize=do_resize, size=size, **kwargs)
        if not do_resize or not do_pad:
            raise ValueError("Mllama's tiling always resizes and pads: do_resize and do_pad must be True")
        if not size or not size.height or size.height != size.width:
            raise ValueError(f"size must be a square tile {{'height': n, 'width': n}}, got {dict(size or {})}")
        for name, value in (("max_image_tiles", max_image_tiles), ("max_images_per_sample", max_images_per_sample)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def fetch_images(self, images):
        """Open paths and bytes with `load_image`, so a corrupt file is a ValueError that names it."""
        if isinstance(images, (list, tuple)):
            return [self.fetch_images(image) for image in images]
        if isinstance(images, (str, os.PathLike, bytes)):
            return load_image(images)
        return images

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        return make_nested_list_of_images(self.fetch_images(images), expected_ndims=expected_ndims)

    def process_image(self, image, do_convert_rgb: bool | None = None, **kwargs) -> Image.Image:
        image = to_pil(image)
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image has no pixels ({image.width}x{image.height}); every image needs at least 1x1")
        return convert_rgb(image) if do_convert_rgb else image

    def _preprocess(self, images: list[list[Image.Image]], size, resample, do_rescale, rescale_factor, do_normalize,
                    image_mean, image_std, max_image_tiles, max_images_per_sample, return_tensors=None,
                    **unused) -> BatchFeature:
        counts = [len(sample) for sample in images]
        if not images or max(counts) == 0:
            raise ValueError("no images were given")
        for row, n in enumerate(counts):
            if n > max_images_per_sample:
                raise ValueError(f"sample {row} has {n} images, more than max_images_per_sample={max_images_per_sample};"
                                 f" split it or raise the limit")
        tile, B, I = size.height, len(images), max(counts)
        levels = level_map(do_rescale, rescale_factor, do_normalize, image_mean, image_std, channels=3)
        # each value is written once: the tiles of each image, then zeros for absent tiles and images unless the
        # array came zeroed
        pixel_values, zeroed = tile_array((B, I, max_image_tiles, 3, tile, tile))
        out = torch.from_numpy(pixel_values)  # the same memory
        ids = np.zeros((B, I), dtype=np.int64)
        mask = np.zeros((B, I, max_image_tiles), dtype=np.int64)
        mask[:, :, 0] = 1  # absent images count as one tile, as transformers and Meta's (1, 1) padding
        num_tiles = []
        for b, sample in enumerate(images):
            for i, image in enumerate(sample):
                plan = plan_tiles(image.height, image.width, tile, max_image_tiles)
                write_image_tiles(out[b, i], image, plan, resample, levels)
                if not zeroed:
                    out[b, i, plan.num_tiles :] = 0
                ids[b, i] = aspect_ratio_id(plan.grid, max_image_tiles)
                mask[b, i, : plan.num_tiles] = 1
            if not zeroed:
                out[b, len(sample) :] = 0
            num_tiles.append([int(n) for n in mask[b, : len(sample)].sum(-1)])
        data = {"pixel_values": pixel_values, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask}
        encoded = BatchFeature(data=data, tensor_type=return_tensors)
        encoded["num_tiles"] = num_tiles
        return encoded


def write_image_tiles(out: torch.Tensor, image: Image.Image, plan: TilePlan, resample, levels: LevelMap) -> None:
    """Resize `image` as planned (Pillow, 8-bit), paste it top-left on the plan's black canvas and write the canvas's
    tiles into out[:num_tiles] (max_tiles, 3, t, t) through `levels`; the tiles after them are left as they are."""
    height, width = plan.resized
    if (image.height, image.width) != plan.resized:
        image = image.resize((width, height), resample=resample)
    channels = len(image.getbands())
    if channels != 3:
        raise ValueError(f"expected RGB pixels (3 channels), got {channels} (mode {image.mode}); keep "
                         "do_convert_rgb=True")
    write_tiles(out, image, plan.grid, (0, 0), levels)


def image_spans(input_ids: list[int], image_token_id: int) -> list[tuple[int, int]]:
    """[start, end) of the text positions that see each image: from its token to the next image's token (the last
    image: to the end); a run of consecutive image tokens all reach the end of the span after the run."""
    locations = [i for i, token in enumerate(input_ids) if token == image_token_id]
    ends = locations[1:] + [len(input_ids)]
    spans = [[start, end] for start, end in zip(locations, ends)]
    for k in range(len(spans) - 2, -1, -1):
        if spans[k][1] == spans[k][0] + 1:  # directly followed by another image token
            spans[k][1] = spans[k + 1][1]
    return [tuple(span) for span in spans]


def cross_attention_mask(input_ids: list[list[int]], num_tiles: list[list[int]], image_token_id: int,
                         max_tiles: int) -> np.ndarray:
    """(B, T, images, max_tiles) int64: 1 where text position t may attend tile k of image i."""
    length = max(len(ids) for ids in input_ids)
    images = max(len(tiles) for tiles in num_tiles)
    mask = np.zeros((len(input_ids), length, images, max_tiles), dtype=np.int64)
    for b, (ids, tiles) in enumerate(zip(input_ids, num_tiles)):
        for i, ((start, end), n) in enumerate(zip(image_spans(ids, image_token_id), tiles)):
            mask[b, start:end, i, :n] = 1
    return mask


class VlmhubMllamaProcessor(TransformersFormatMixin, ProcessorMixin):
    """VlmhubMllamaImageProcessor + any tokenizer that knows `<|image|>` (Llama 3's has it at 128256).

    `processor(text=..., images=..., padding=..., return_tensors="pt")`: images are nested per sample
    ([[a], [b, c]]); a flat list is split over the texts by their `<|image|>` counts. Returns input_ids,
    attention_mask, pixel_values, aspect_ratio_ids, aspect_ratio_mask and cross_attention_mask.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.image_token = IMAGE_TOKEN
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {self.image_token!r} token: add it as a special token first")
        return token_id

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        texts = None if text is None else ([text] if isinstance(text, str) else list(text))
        return_tensors = kwargs.pop("return_tensors", None)
        image_keys = set(self.image_processor.valid_kwargs.__annotations__)
        image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in image_keys}
        data, num_tiles = {}, None
        if images is not None:
            nested = self._nest(images, texts)
            if texts is not None:
                self._check_counts(texts, nested)
            encoded = self.image_processor(nested, return_tensors=return_tensors, **image_kwargs)
            num_tiles = encoded.pop("num_tiles")
            data.update(encoded)
        if texts is not None:
            texts = [self._with_bos(t) for t in texts]
            encoding = self.tokenizer(texts, **kwargs)
            data.update(encoding)
            if num_tiles is not None:
                max_tiles = data["aspect_ratio_mask"].shape[-1]
                data["cross_attention_mask"] = cross_attention_mask(
                    [list(ids) for ids in encoding["input_ids"]], num_tiles, self.image_token_id, max_tiles
                )
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _nest(self, images, texts):
        """Images nested per sample; a flat list goes to the texts by their <|image|> counts."""
        images = self.image_processor.fetch_images(images)
        if isinstance(images, (list, tuple)) and images and not isinstance(images[0], (list, tuple)) and texts \
                and len(texts) > 1:
            counts = [t.count(self.image_token) for t in texts]
            if sum(counts) != len(images):
                raise ValueError(f"the texts have {sum(counts)} {self.image_token} tokens ({counts} per sample) but "
                                 f"{len(images)} images were given")
            starts = np.cumsum([0] + counts)
            return [list(images[s:e]) for s, e in zip(starts[:-1], starts[1:])]
        return make_nested_list_of_images(images)

    def _check_counts(self, texts: list[str], nested) -> None:
        in_text = [t.count(self.image_token) for t in texts]
        given = [len(sample) for sample in nested]
        if in_text != given:
            raise ValueError(f"each image needs one {self.image_token} in its text: the texts have {in_text} "
                             f"{self.image_token} tokens per sample but {given} images were given per sample")

    def _with_bos(self, prompt: str) -> str:
        """Prepend the tokenizer's bos token unless present, after any leading image tokens (as transformers)."""
        bos = self.tokenizer.bos_token
        if not bos or bos in prompt:
            return prompt
        lead = 0
        while prompt.startswith(self.image_token, lead):
            lead += len(self.image_token)
        return prompt[:lead] + bos + prompt[lead:]

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        return [n for n in names if n != "num_tiles"] + ["cross_attention_mask"]


__all__ = ["VlmhubMllamaImageProcessor", "VlmhubMllamaProcessor"]
