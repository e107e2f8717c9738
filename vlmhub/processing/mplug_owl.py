"""mPLUG-Owl processors: square-resize + CLIP preprocessing, and the original prompt encoding, in which every
`<image>` becomes num_query_tokens + 1 image tokens (the abstractor's queries and vit_eos).

The original (`MplugOwlProcessor`) encodes a prompt as [bos] + the tokens of each text chunk between images,
each chunk tokenised on its own by sentencepiece (which puts its dummy-prefix space in front of every chunk),
and right-pads the batch with eos. We do the same; `chunk_prefix=" "` writes that dummy prefix out, because
transformers' fast Llama tokenizer only adds it at the very start of a string and not after a `\n` token.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .blip2 import expand_placeholders, tokenize_between_images
from .clip import VlmhubCLIPImageProcessor

SYSTEM = ("The following is a conversation between a curious human and AI assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# "<system>\nHuman: <image>\nHuman: <question>\nAI: <answer>\nHuman: ...": one line per image, text and answer.
# `end_answers_with_eos=True` (training renderings) ends each answer with eos, as the original trains on answer + eos.
CHAT_TEMPLATE = (
    "{% set system = namespace(text='" + SYSTEM.replace("'", "\\'") + "') %}"
    "{% for m in messages if m['role'] == 'system' %}{% set system.text = m['content'] if m['content'] is string "
    "else m['content'][0]['text'] %}{% endfor %}{{ system.text }}"
    "{% for m in messages if m['role'] != 'system' %}{% set who = 'Human' if m['role'] == 'user' else 'AI' %}"
    "{% if m['content'] is string %}{{ '\n' + who + ': ' + m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ '\n' + who + ': <image>' }}{% elif c['type'] == 'text' %}"
    "{{ '\n' + who + ': ' + c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if m['role'] == 'assistant' and end_answers_with_eos is defined and end_answers_with_eos %}"
    "{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\nAI: ' }}{% endif %}"
)
PADDING_SIDES = ("right", "left")


class VlmhubMplugOwlImageProcessor(VlmhubCLIPImageProcessor):
    """Resize to 224x224 (bicubic, aspect ratio not kept, as the original processor does before CLIP's steps),
    rescale, normalise with CLIP's statistics. An int `size` means a square."""

    size = {"height": 224, "width": 224}
    default_to_square = True
    crop_size = {"height": 224, "width": 224}


class VlmhubMplugOwlProcessor(ProcessorMixin):
    """Image processor + tokenizer with mPLUG-Owl's prompt encoding.

    `processor(images=..., text=..., padding_side="right", max_length=None, return_tensors="pt")` returns
    pixel_values, input_ids and attention_mask. Right padding with eos reproduces the original's ids; use
    `padding_side="left"` for batched generation.
    """

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: int = 65, image_token: str = "<image>",
                 chunk_prefix: str = " ", chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.chunk_prefix = chunk_prefix
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"The tokenizer has no {self.image_token!r} token: add it as a special token first")
        return token_id

    def __call__(self, images=None, text=None, padding_side: str = "right", max_length: int | None = None,
                 return_tensors="pt", **kwargs) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [])
        images = _flatten(images)
        placeholders = sum(t.count(self.image_token) for t in texts)
        if texts and placeholders != len(images):
            raise ValueError(f"The text has {placeholders} {self.image_token} placeholders but {len(images)} images were given")
        data = {}
        if images:
            image_keys = set(self.image_processor.valid_kwargs.__annotations__) - {"return_tensors"}
            image_kwargs = {k: v for k, v in kwargs.items() if k in image_keys}
            data.update(self.image_processor(images, return_tensors="pt", **image_kwargs))
        if texts:
            rows = [self.encode_prompt(t, max_length) for t in texts]
            data.update(self.pad(rows, padding_side))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def expand_image_tokens(self, text: str, sizes: list, spans=()) -> tuple[str, list]:
        """Each `<image>` of `text` repeated num_image_tokens times; character `spans` moved along."""
        tokens = self.image_token * self.num_image_tokens
        return expand_placeholders(text, self.image_token, [tokens] * len(sizes), spans)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode_prompt` of an expanded text (image tokens written out), with each token's character span in it."""
        ids, offsets = tokenize_between_images(self.tokenizer, text, self.image_token, self.image_token_id,
                                               chunk_prefix=self.chunk_prefix)
        return [self.tokenizer.bos_token_id] + ids, [(0, 0)] + offsets

    def encode_prompt(self, text: str, max_length: int | None = None) -> list[int]:
        """[bos] + each text chunk's tokens, each image placeholder as num_image_tokens image ids."""
        ids = [self.tokenizer.bos_token_id]
        for chunk in re.split(f"({re.escape(self.image_token)})", text):
            if chunk == self.image_token:
                ids += [self.image_token_id] * self.num_image_tokens
            elif chunk:
                ids += self.tokenizer(self.chunk_prefix + chunk, add_special_tokens=False)["input_ids"]
        if max_length is not None and len(ids) > max_length:
            kept = ids[:max_length]
            if kept.count(self.image_token_id) % self.num_image_tokens:
                raise ValueError(f"max_length {max_length} cuts through an image's {self.num_image_tokens} tokens; "
                                 "raise max_length or shorten the text, a partial image cannot be used")
            ids = kept
        return ids

    def pad(self, rows: list[list[int]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad with eos (the original's choice) to the longest row; attention_mask marks the real tokens."""
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {padding_side!r}")
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.tokenizer.eos_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
            ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
        return {"input_ids": ids, "attention_mask": mask}


def _flatten(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [im for item in images for im in _flatten(item)]
    return [images]


def processor_from_mplug_owl(folder, config) -> VlmhubMplugOwlProcessor:
    """Our processor for a released mPLUG-Owl folder: its CLIP settings as a square resize, its Llama tokenizer
    (`MplugOwlTokenizer` is a LlamaTokenizer) with `<image>` added at config.image_token_id."""
    from transformers import AutoTokenizer, LlamaTokenizer

    folder = Path(folder)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    side = config.vision_config.image_size
    keys = set(VlmhubMplugOwlImageProcessor().to_dict()) - {"image_processor_type", "size", "crop_size"}
    settings = {k: v for k, v in settings.items() if k in keys and not k.startswith("_")}
    image_processor = VlmhubMplugOwlImageProcessor(size={"height": side, "width": side},
                                                   crop_size={"height": side, "width": side}, **settings)
    tokenizer_class = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    loader = LlamaTokenizer if tokenizer_class == "MplugOwlTokenizer" else AutoTokenizer
    tokenizer = loader.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ValueError(f"<image> got id {tokenizer.convert_tokens_to_ids('<image>')}, the model expects {config.image_token_id}")
    return VlmhubMplugOwlProcessor(image_processor, tokenizer, num_image_tokens=config.num_image_tokens)
