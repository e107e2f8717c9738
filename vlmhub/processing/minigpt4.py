"""MiniGPT-4 preprocessing: BLIP-2's image transform and the `<Img><ImageHere></Img>` prompt format.

MiniGPT-4 splits the prompt at `<ImageHere>` and tokenizes the pieces separately (BOS on the first piece only), then
puts the image features between them. The processor does the same and writes `num_image_tokens` image tokens in
the gap, so the ids are exactly those of the original at every text position.

The chat template writes the same format ("###Human: <Img><ImageHere></Img> ... ###Assistant: "), each answer ending
with "###" (the Vicuna end_sym MiniGPT-4 trains with), so `processor(images=..., text=template_output)` encodes it.
"""

from __future__ import annotations

import torch
from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .blip2 import (VlmhubBlip2ImageProcessor, _as_list, add_image_token, expand_placeholders,
                    tokenize_between_images)

IMAGE_PLACEHOLDER = "<ImageHere>"
PROMPT_TEMPLATE = "###Human: {} ###Assistant: "  # the Vicuna (v0) template of MiniGPT-4's eval config
# PROMPT_TEMPLATE per turn: "###Human: <Img><ImageHere></Img> {q} ###Assistant: {a}###Human: ..."; an answer ends with
# "###" (Vicuna's end_sym), which also opens the next turn.
CHAT_TEMPLATE = (
    "{%- for m in messages %}{%- set parts = [{'type': 'text', 'text': m['content']}] if m['content'] is string "
    "else m['content'] %}"
    "{%- if m['role'] == 'user' %}{%- if loop.first or messages[loop.index0 - 1]['role'] != 'assistant' %}{{- '###' }}"
    "{%- endif %}{{- 'Human: ' }}{%- for c in parts %}{%- if c['type'] == 'image' %}{{- '<Img><ImageHere></Img> ' }}"
    "{%- elif c['type'] == 'text' %}{{- c['text'] }}{%- endif %}{%- endfor %}{{- ' ' }}"
    "{%- elif m['role'] == 'assistant' %}{{- '###Assistant: ' }}{%- for c in parts if c['type'] == 'text' %}"
    "{{- c['text'] }}{%- endfor %}{{- '###' }}"
    "{%- else %}{%- for c in parts if c['type'] == 'text' %}{{- c['text'] }}{%- endfor %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '###Assistant: ' }}{%- endif %}"
)


class VlmhubMiniGPT4ImageProcessor(VlmhubBlip2ImageProcessor):
    """MiniGPT-4's Blip2ImageEvalProcessor: LAVIS' transform (squash to 224, bicubic, CLIP mean/std)."""


class VlmhubMiniGPT4Processor(ProcessorMixin):
    """Image processor + the LLM's tokenizer. Each `<ImageHere>` in a text takes one image, in order."""

    # What a prompt (and the chat template) writes per image; the processor turns it into num_image_tokens tokens.
    image_placeholder = IMAGE_PLACEHOLDER

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: int = 32, image_token: str = "<image>",
                 prompt_template: str = PROMPT_TEMPLATE, chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        self.prompt_template = prompt_template
        if tokenizer is not None:
            add_image_token(tokenizer, image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    def expand_image_tokens(self, text: str, sizes: list, spans=()) -> tuple[str, list]:
        """Each <ImageHere> of `text` as num_image_tokens image tokens; character `spans` moved along."""
        tokens = self.image_token * self.num_image_tokens
        return expand_placeholders(text, IMAGE_PLACEHOLDER, [tokens] * len(sizes), spans)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode` of an expanded text (image tokens written out), with each token's character span in it."""
        return tokenize_between_images(self.tokenizer, text, self.image_token, self.image_token_id,
                                       specials_on_first=True)

    def format_prompt(self, instruction: str, with_image: bool = True) -> str:
        """'Describe it.' -> '###Human: <Img><ImageHere></Img> Describe it. ###Assistant: '."""
        return self.prompt_template.format(f"<Img>{IMAGE_PLACEHOLDER}</Img> {instruction}" if with_image else instruction)

    def __call__(self, images=None, text=None, return_tensors=None, **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("MiniGPT-4 needs a prompt with <ImageHere> (see format_prompt)")
        texts = [text] if isinstance(text, str) else list(text)
        images = _as_list(images)
        placeholders = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
        if placeholders != len(images):
            raise ValueError(f"The text has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images were given")
        data = dict(self.image_processor(images, return_tensors="pt", **kwargs)) if images else {}
        rows = [self.encode(t) for t in texts]
        data.update(self.pad(rows))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def encode(self, text: str) -> list[int]:
        """Pieces around each <ImageHere> tokenized apart (BOS on the first), image tokens in between."""
        pieces = text.split(IMAGE_PLACEHOLDER)
        ids = self.tokenizer(pieces[0])["input_ids"]
        for piece in pieces[1:]:
            ids += [self.image_token_id] * self.num_image_tokens
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
        return ids

    def pad(self, rows: list[list[int]]) -> dict:
        """Right padding (MiniGPT-4 pads after the text) with the tokenizer's pad id, or 0 as MiniGPT-4's '$$' resolves."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}


__all__ = ["VlmhubMiniGPT4ImageProcessor", "VlmhubMiniGPT4Processor"]
