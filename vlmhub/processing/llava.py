"""LLaVA processors: CLIP preprocessing with LLaVA-1.5's pad-to-square or NeXT's AnyRes crops, and the expansion of
each `<image>` into exactly as many image tokens as the model will produce for that image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ImagesKwargs, ProcessorMixin

from ..geometry.anyres import anyres_num_tokens, fit_within, grid_shape
from .base import TransformersFormatMixin
from .clip import VlmhubCLIPImageProcessor
from .image import (BICUBIC, LevelMap, level_map, preprocess_image, resize, resized_size, tile_array,
                    write_tiles)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
def llava_chat_template(system: str = VICUNA_SYSTEM) -> str:
    """LLaVA-1.5's `vicuna_v1` conversation: "<system> USER: <image>\n<question> ASSISTANT: <answer></s>USER: ..."
    (a system message in the conversation replaces `system`; an empty one drops it)."""
    return (
        "{% set system = namespace(text='" + system.replace("'", "\\'") + "') %}"
        "{% for m in messages if m['role'] == 'system' %}{% set system.text = m['content'] if m['content'] is string "
        "else m['content'][0]['text'] %}{% endfor %}{% if system.text %}{{ system.text }} {% endif %}"
        "{% for m in messages if m['role'] != 'system' %}{{ 'USER' if m['role'] == 'user' else 'ASSISTANT' }}: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ ' ' if m['role'] == 'user' else '</s>' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


CHAT_TEMPLATE = llava_chat_template()


class LlavaImagesKwargs(ImagesKwargs, total=False):
    image_aspect_ratio: str
    image_grid_pinpoints: list[list[int]]


class VlmhubLlavaImageProcessor(VlmhubCLIPImageProcessor):
    """CLIP preprocessing plus LLaVA's image_aspect_ratio: "square" (as is), "pad" (expand to a square on the mean
    colour first, LLaVA-1.5) or "anyres" (NeXT: the whole image resized to one crop, then the crops of the best
    pinpoint canvas, row-major). AnyRes returns pixel_values (images, max_crops, 3, H, W) and image_sizes (h, w)."""

    valid_kwargs = LlavaImagesKwargs
    image_aspect_ratio = "pad"
    image_grid_pinpoints = None

    def _preprocess(self, images, return_tensors=None, image_aspect_ratio=None, image_grid_pinpoints=None, **options):
        options.pop("do_pad", None)
        if image_aspect_ratio == "anyres":
            return self._anyres(images, image_grid_pinpoints, return_tensors, **options)
        if image_aspect_ratio == "pad":
            fill = tuple(int(x * 255) for x in options["image_mean"])
            images = [expand_to_square(image, fill) for image in images]
        return super()._preprocess(images, return_tensors=return_tensors, **options)

    def _anyres(self, images, pinpoints, return_tensors, **options) -> BatchFeature:
        if not pinpoints:
            raise ValueError("image_aspect_ratio='anyres' needs image_grid_pinpoints")
        crop = options["crop_size"].height
        if not crops_pass_unchanged(crop, options) or any(image.mode != "RGB" for image in images):
            return self._anyres_through_pil(images, pinpoints, crop, return_tensors, **options)
        plans = [anyres_plan((image.height, image.width), pinpoints, crop) for image in images]
        levels = level_map(options["do_rescale"], options["rescale_factor"], options["do_normalize"],
                           options["image_mean"], options["image_std"], channels=3)
        crops = max(1 + rows * cols for (rows, cols), _, _ in plans)
        pixel_values, zeroed = tile_array((len(images), crops, 3, crop, crop))
        out = torch.from_numpy(pixel_values)  # the same memory
        for i, (image, plan) in enumerate(zip(images, plans)):
            write_anyres_crops(out[i], image, plan, levels)
            if not zeroed:
                out[i, 1 + plan[0][0] * plan[0][1] :] = 0  # unused crops of images with a smaller grid
        sizes = torch.tensor([[image.height, image.width] for image in images])
        return BatchFeature(data={"pixel_values": out, "image_sizes": sizes}, tensor_type=return_tensors)

    def _anyres_through_pil(self, images, pinpoints, crop, return_tensors, **options) -> BatchFeature:
        """The general path: PIL crops, each through the whole CLIP pipeline (resize, centre crop, ...)."""
        crops = [anyres_crops(image, pinpoints, crop) for image in images]
        pixel_values = torch.empty(len(images), max(map(len, crops)), 3, crop, crop)
        for i, image_crops in enumerate(crops):
            for j, c in enumerate(image_crops):
                pixel_values[i, j] = preprocess_image(c, out=pixel_values[i, j], **options)
            pixel_values[i, len(image_crops):] = 0  # unused crops of images with a smaller grid
        sizes = torch.tensor([[image.height, image.width] for image in images])
        return BatchFeature(data={"pixel_values": pixel_values, "image_sizes": sizes}, tensor_type=return_tensors)


def crops_pass_unchanged(crop: int, options: dict) -> bool:
    """Whether a crop x crop image comes out of the CLIP pipeline's resize and centre crop as it went in, so AnyRes
    crops can be written straight from the resized image (the usual case: size and crop_size both the crop side)."""
    if options["do_resize"] and resized_size(crop, crop, options["size"]) != (crop, crop):
        return False
    crop_size = options["crop_size"]
    return not options["do_center_crop"] or (crop_size.height, crop_size.width) == (crop, crop)


def anyres_plan(size: tuple[int, int], pinpoints, crop: int) -> tuple[tuple[int, int], ...]:
    """((rows, cols) of the best canvas, (height, width) of the image fitted into it, (top, left) where the fitted
    image sits, centred on the canvas)."""
    rows, cols = grid_shape(size, pinpoints, crop)
    new_h, new_w = fit_within(size, (rows * crop, cols * crop))
    return (rows, cols), (new_h, new_w), ((rows * crop - new_h) // 2, (cols * crop - new_w) // 2)


def write_anyres_crops(out: torch.Tensor, image: Image.Image, plan, levels: LevelMap) -> None:
    """out (max_crops, 3, crop, crop) <- [the image squashed to one crop] + the crops of the canvas holding the image
    fitted and centred on black (`anyres_crops` without building PIL crops); unused crops are left as they are.
    `plan`: `anyres_plan` of the image."""
    crop, (grid, fitted, offset) = out.shape[-1], plan
    write_tiles(out[:1], resize(image, (crop, crop), BICUBIC), (1, 1), (0, 0), levels)
    write_tiles(out[1:], resize(image, fitted, BICUBIC), grid, offset, levels)


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad the short side symmetrically with `fill` (LLaVA's expand2square: the image is pasted at (d // 2))."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def anyres_crops(image: Image.Image, pinpoints, crop: int) -> list[Image.Image]:
    """[the whole image squashed to crop x crop] + the crops of the best canvas (fitted, centred on black)."""
    (rows, cols), (new_h, new_w), (top, left) = anyres_plan((image.height, image.width), pinpoints, crop)
    canvas = Image.new("RGB", (cols * crop, rows * crop), (0, 0, 0))
    canvas.paste(resize(image, (new_h, new_w), BICUBIC), (left, top))
    grid = [canvas.crop((c * crop, r * crop, (c + 1) * crop, (r + 1) * crop)) for r in range(rows) for c in range(cols)]
    return [resize(image, (crop, crop), BICUBIC)] + grid


class VlmhubLlavaProcessor(TransformersFormatMixin, ProcessorMixin):
    """Image processor + tokenizer; each `<image>` in the text becomes the image's exact number of image tokens.

    The model-side numbers it needs (patch_size, vision_feature_select_strategy, patch_merge_type,
    spatial_pool_stride, visual_token_merge) are stored here, as transformers' LlavaProcessor stores patch_size.
    """

    def __init__(self, image_processor=None, tokenizer=None, patch_size: int = 14, vision_feature_select_strategy: str = "patch",
                 patch_merge_type: str = "flat", spatial_pool_stride: int = 1, visual_token_merge: int = 0,
                 image_token: str = "<image>", chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.patch_merge_type = patch_merge_type
        self.spatial_pool_stride = spatial_pool_stride
        self.visual_token_merge = visual_token_merge
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {self.image_token!r} token: add it as a special token first")
        return token_id

    def num_image_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Image tokens the model produces for an image of (height, width); only AnyRes depends on the size."""
        ip = self.image_processor
        crop = ip.crop_size["height"]
        side = crop // self.patch_size // self.spatial_pool_stride
        merged = self.visual_token_merge  # ToMe removes exactly this many tokens per crop
        if merged and not 0 < merged < side * side:
            raise ValueError(f"visual_token_merge {merged} must leave at least one of a crop's {side * side} "
                             "patch tokens")
        per_crop = side * side - merged + (self.vision_feature_select_strategy == "cls_patch")
        if ip.image_aspect_ratio != "anyres":
            return per_crop
        if not merged:
            return anyres_num_tokens(tuple(image_size), ip.image_grid_pinpoints, crop, side, self.patch_merge_type)
        if self.patch_merge_type != "flat":
            raise ValueError("visual_token_merge needs patch_merge_type='flat' under AnyRes, "
                             f"got {self.patch_merge_type!r}")
        rows, cols = grid_shape(tuple(image_size), ip.image_grid_pinpoints, crop)
        return per_crop * (1 + rows * cols)

    def expand_image_tokens(self, text: str, sizes: list, spans: list[tuple[int, int]] = ()) -> tuple[str, list]:
        """`text` with its i-th placeholder repeated num_image_tokens(sizes[i]) times, and character `spans` of the
        original text moved to where they land in the expanded one."""
        counts = iter(self.num_image_tokens(size) for size in sizes)
        expanded, shifts, cursor = _expand(text, self.image_token, counts), [], 0
        for n in (self.num_image_tokens(size) for size in sizes):
            cursor = text.index(self.image_token, cursor) + len(self.image_token)
            shifts.append((cursor, (n - 1) * len(self.image_token)))
        def move(i):
            return i + sum(extra for at, extra in shifts if at <= i)
        return expanded, [(move(a), move(b)) for a, b in spans]

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        images = _flatten(images)
        placeholders = sum(t.count(self.image_token) for t in texts)
        if placeholders != len(images):
            raise ValueError(f"The text has {placeholders} {self.image_token} placeholders but {len(images)} images were given")
        data = {}
        if images:
            image_keys = set(self.image_processor.valid_kwargs.__annotations__) - {"return_tensors"}
            image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in image_keys}
            data.update(self.image_processor(images, return_tensors="pt", **image_kwargs))
            sizes = iter(data["image_sizes"].tolist() if "image_sizes" in data else [None] * len(images))
            texts = [self.expand_image_tokens(t, [next(sizes) for _ in range(t.count(self.image_token))])[0] for t in texts]
        if texts:
            encoding = self.tokenizer(texts, **{k: v for k, v in kwargs.items() if k != "return_tensors"})
            self._check_truncation(texts, encoding["input_ids"])
            data.update(encoding)
        return BatchFeature(data=data, tensor_type=kwargs.get("return_tensors"))

    def _check_truncation(self, texts: list[str], input_ids) -> None:
        if not any(self.image_token in t for t in texts):
            return
        token_id = self.image_token_id
        for row, (t, ids) in enumerate(zip(texts, input_ids)):
            expected, got = t.count(self.image_token), list(ids).count(token_id)
            if expected != got:
                raise ValueError(f"Sample {row}: truncation cut through its image tokens ({got} of {expected} kept); "
                                 "raise max_length or shorten the text, a partial image cannot be trained on")


def _flatten(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in _flatten(item)]
    return [images]


def _expand(text: str, token: str, counts) -> str:
    parts = text.split(token)
    return parts[0] + "".join(token * next(counts) + part for part in parts[1:])


def _image_processor(settings: dict, config) -> VlmhubLlavaImageProcessor:
    keys = set(VlmhubLlavaImageProcessor().to_dict()) - {"image_processor_type"}
    settings = {k: v for k, v in settings.items() if k in keys and not k.startswith("_")}
    settings.update(image_aspect_ratio=config.image_aspect_ratio, image_grid_pinpoints=config.image_grid_pinpoints)
    return VlmhubLlavaImageProcessor(**settings)


def _processor(image_processor, tokenizer, config) -> VlmhubLlavaProcessor:
    return VlmhubLlavaProcessor(
        image_processor, tokenizer, patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy, patch_merge_type=config.patch_merge_type,
        spatial_pool_stride=config.spatial_pool_stride, visual_token_merge=config.visual_token_merge,
    )


def processor_from_transformers(folder, config):
    """Our processor for a transformers llava / llava_next folder, when it holds preprocessing files."""
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        return None
    theirs = AutoImageProcessor.from_pretrained(folder).to_dict()
    if theirs.get("do_pad") and config.image_aspect_ratio != "anyres":  # llava-hf's pad-to-square option
        config.image_aspect_ratio = "pad"
    return _processor(_image_processor(theirs, config), AutoTokenizer.from_pretrained(folder), config)


def processor_from_llava(folder, tower_dir, config):
    """Our processor for an original LLaVA checkpoint: the tower's CLIP preprocessing + LLaVA's tokenizer + <image>."""
    from transformers import AutoTokenizer

    folder, tower_dir = Path(folder), Path(tower_dir)
    settings = json.loads((tower_dir / "preprocessor_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ValueError(f"<image> got id {tokenizer.convert_tokens_to_ids('<image>')}, the model expects {config.image_token_id}")
    return _processor(_image_processor(settings, config), tokenizer, config)
