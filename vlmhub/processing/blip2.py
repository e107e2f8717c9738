"""BLIP-2 preprocessing: LAVIS' `BlipImageEvalProcessor` (squash to size x size, bicubic, CLIP mean/std) and a
processor that puts `num_query_tokens` image tokens in front of each prompt (before BOS), as transformers'
Blip2Processor does, so the model's merge finds exactly one soft-prompt slot per query.
"""

from __future__ import annotations

from pathlib import Path

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import AddedToken

from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .image import BICUBIC, ResizeCropImageProcessor

IMAGE_TOKEN = "<image>"


class VlmhubBlip2ImageProcessor(ResizeCropImageProcessor):
    """Resize to 224x224 (bicubic, aspect ratio not kept), rescale, normalise with CLIP's statistics."""

    do_resize = True
    size = {"height": 224, "width": 224}
    resample = BICUBIC
    do_center_crop = False
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    do_convert_rgb = True


def add_image_token(tokenizer, image_token: str = IMAGE_TOKEN) -> int:
    """The id of `image_token`, added to the tokenizer as a special token if it is not there yet."""
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, normalized=False, special=True)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(image_token)


class VlmhubBlip2Processor(ProcessorMixin):
    """Image processor + the language model's tokenizer; with images, each text starts with num_query_tokens image
    tokens (not padded, not truncated, before BOS). One image per text."""

    def __init__(self, image_processor=None, tokenizer=None, num_query_tokens: int = 32, image_token: str = IMAGE_TOKEN,
                 **kwargs):
        self.num_query_tokens = num_query_tokens
        self.image_token = image_token
        if tokenizer is not None:
            add_image_token(tokenizer, image_token)
        super().__init__(image_processor, tokenizer)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("Pass images, text, or both")
        return_tensors = kwargs.pop("return_tensors", None)
        images = _as_list(images)
        texts = [text] if isinstance(text, str) else (list(text) if text is not None else None)
        if images and texts is None:
            texts = [""] * len(images)
        data = {}
        if images:
            if len(texts) != len(images):
                raise ValueError(f"BLIP-2 takes one image per text: got {len(images)} images and {len(texts)} texts")
            image_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in self.image_processor.valid_kwargs.__annotations__}
            data.update(self.image_processor(images, return_tensors="pt", **image_kwargs))
        if texts is not None:
            data.update(self._tokenize(texts, with_images=bool(images), **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _tokenize(self, texts: list[str], with_images: bool, **kwargs) -> dict:
        if "max_length" in kwargs and with_images:
            kwargs["max_length"] -= self.num_query_tokens  # the image tokens are part of the budget
        if kwargs.get("padding") and with_images and self.tokenizer.padding_side == "left":
            raise ValueError("left padding would put pad tokens between the image tokens and the text; pad right")
        encoding = self.tokenizer(texts, **kwargs)
        if not with_images:
            return dict(encoding)
        prefix = [self.image_token_id] * self.num_query_tokens
        encoding["input_ids"] = [prefix + list(ids) for ids in encoding["input_ids"]]
        encoding["attention_mask"] = [[1] * len(prefix) + list(m) for m in encoding["attention_mask"]]
        return {k: encoding[k] for k in ("input_ids", "attention_mask")}


def _as_list(images) -> list:
    if images is None:
        return []
    return list(images) if isinstance(images, (list, tuple)) else [images]


def processor_from_transformers(folder: str | Path, config):
    """Our processor for a saved transformers blip-2 folder, when it holds preprocessing files (else None)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        return None
    theirs = AutoImageProcessor.from_pretrained(folder).to_dict()
    keys = set(VlmhubBlip2ImageProcessor().to_dict())
    settings = {k: v for k, v in theirs.items() if k in keys and not k.startswith("_") and k != "image_processor_type"}
    image_processor = VlmhubBlip2ImageProcessor(**settings)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return VlmhubBlip2Processor(image_processor, tokenizer, num_query_tokens=config.num_query_tokens)


__all__ = ["VlmhubBlip2ImageProcessor", "VlmhubBlip2Processor", "add_image_token"]
