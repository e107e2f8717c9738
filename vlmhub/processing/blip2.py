"""BLIP-2 preprocessing: LAVIS' `BlipImageEvalProcessor` (squash to size x size, bicubic, CLIP mean/std) and a
processor that puts `num_query_tokens` image tokens in front of each prompt (before BOS), as transformers'
Blip2Processor does, so the model's merge finds exactly one soft-prompt slot per query.

The chat template writes BLIP-2's VQA prompt ("Question: ... Answer: ...") with the image first, as `<image>` then
the BOS token; a text that holds `<image>` (a chat template's output) has it expanded in place rather than getting
the prefix, so `processor(images=..., text=template_output, add_special_tokens=False)` gives the same ids as
`processor(images=..., text="Question: ... Answer:")` with a tokenizer that adds BOS itself (OPT's and Llama's do).

Both classes' `from_pretrained` also read transformers' blip-2 folders (Blip2Processor), giving our classes.
"""

from __future__ import annotations

import re
from pathlib import Path

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import AddedToken

from .base import TransformersFormatMixin
from .clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .image import BICUBIC, ResizeCropImageProcessor

IMAGE_TOKEN = "<image>"

# "<image>{bos}Question: {q} Answer: {a}{eos}Question: ...": every image first (the query tokens go before BOS, as in
# pre-training; BLIP-2 takes one image), then the turns in BLIP-2's VQA format; the generation prompt is "Answer:".
CHAT_TEMPLATE = (
    "{%- for m in messages if m['content'] is not string %}{%- for c in m['content'] if c['type'] == 'image' %}"
    "{{- '<image>' }}{%- endfor %}{%- endfor %}{{- bos_token or '' }}"
    "{%- for m in messages %}{%- if m['content'] is string %}{%- set text = m['content'] %}{%- else %}"
    "{%- set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') %}"
    "{%- endif %}"
    "{%- if m['role'] == 'user' %}{{- 'Question: ' + text + ' ' }}"
    "{%- elif m['role'] == 'assistant' %}{{- 'Answer: ' + text + (eos_token or '') }}"
    "{%- else %}{{- text + ' ' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Answer:' }}{%- endif %}"
)


class VlmhubBlip2ImageProcessor(TransformersFormatMixin, ResizeCropImageProcessor):
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


def expand_placeholders(text: str, placeholder: str, replacements: list[str], spans=()) -> tuple[str, list]:
    """`text` with its i-th `placeholder` replaced by replacements[i], and character `spans` (start, end) of `text`
    moved to where they land in the result (spans never start inside a placeholder)."""
    pieces = text.split(placeholder)
    if len(pieces) - 1 != len(replacements):
        raise ValueError(f"the text has {len(pieces) - 1} {placeholder} placeholders but {len(replacements)} images")
    out, shifts, cursor, shift = pieces[0], [], len(pieces[0]), 0
    for piece, new in zip(pieces[1:], replacements):
        cursor += len(placeholder)  # just after this placeholder in `text`
        shift += len(new) - len(placeholder)
        shifts.append((cursor, shift))
        out += new + piece
        cursor += len(piece)

    def move(i: int) -> int:
        return i + next((s for at, s in reversed(shifts) if at <= i), 0)

    return out, [(move(a), move(b)) for a, b in spans]


def tokenize_between_images(tokenizer, text: str, image_token: str, image_token_id: int, chunk_prefix: str = "",
                            specials_on_first: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of `text` with every `image_token` as image_token_id and each piece between them tokenized on its own
    (`chunk_prefix` in front; the tokenizer's special tokens on the first piece only when `specials_on_first`), as
    MiniGPT-4 and mPLUG-Owl encode prompts; with each token's character span in `text` (for training labels)."""
    ids, offsets, start = [], [], 0
    for k, piece in enumerate(re.split(f"({re.escape(image_token)})", text)):
        if piece == image_token:
            ids.append(image_token_id)
            offsets.append((start, start + len(piece)))
        elif piece or (k == 0 and specials_on_first):
            enc = tokenizer(chunk_prefix + piece, add_special_tokens=specials_on_first and k == 0,
                            return_offsets_mapping=True)
            shift = start - len(chunk_prefix)  # the prefix is not part of `text`
            ids += enc["input_ids"]
            offsets += [(max(a + shift, start), max(b + shift, start)) for a, b in enc["offset_mapping"]]
        start += len(piece)
    return ids, offsets


class VlmhubBlip2Processor(TransformersFormatMixin, ProcessorMixin):
    """Image processor + the language model's tokenizer; with images, each text starts with num_query_tokens image
    tokens (not padded, not truncated, before BOS). One image per text."""

    def __init__(self, image_processor=None, tokenizer=None, num_query_tokens: int = 32, image_token: str = IMAGE_TOKEN,
                 chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.num_query_tokens = num_query_tokens
        self.image_token = image_token
        if tokenizer is not None:
            add_image_token(tokenizer, image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def num_image_tokens(self, image_size=None) -> int:
        """Image tokens per image: the query count, whatever the image size."""
        return self.num_query_tokens

    def expand_image_tokens(self, text: str, sizes: list, spans=()) -> tuple[str, list]:
        """Each `<image>` of `text` repeated num_query_tokens times; character `spans` moved along."""
        tokens = self.image_token * self.num_query_tokens
        return expand_placeholders(text, self.image_token, [tokens] * len(sizes), spans)

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
        if with_images and any(self.image_token in t for t in texts):  # chat-template output: expand in place
            counts = [t.count(self.image_token) for t in texts]
            if counts != [1] * len(texts):
                raise ValueError(f"BLIP-2 takes one image per text: the texts hold {counts} {self.image_token}")
            texts = [self.expand_image_tokens(t, [None])[0] for t in texts]
            encoding = self.tokenizer(texts, **kwargs)
            return {k: encoding[k] for k in ("input_ids", "attention_mask")}
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


__all__ = ["VlmhubBlip2ImageProcessor", "VlmhubBlip2Processor", "add_image_token", "expand_placeholders",
           "tokenize_between_images"]
