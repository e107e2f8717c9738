"""OpenFlamingo preprocessing: open_clip's image transform (= OpenAI CLIP's) and interleaved `<image>` prompts.

`VlmhubFlamingoProcessor(images=[[a, b], [c]], text=["<image>x<|endofchunk|><image>y", "<image>z"])` returns
input_ids, attention_mask and pixel_values (B, images, 1, 3, H, W) as open_flamingo's vision_x (one frame per
image; samples with fewer images are padded with zero images that no token attends to). `few_shot_prompt` builds
the interleaved prompt "<image>{text}<|endofchunk|>" per demonstration followed by "<image>{query}".
For batched generation, left padding (`processor.tokenizer.padding_side = "left"`) is what open_flamingo uses.

The chat template writes open_flamingo's VQA format, "<image>Question:{q} Short answer:{a}<|endofchunk|>" per turn
after BOS (generation prompt "Short answer:"); it holds the BOS token, so pass `add_special_tokens=False` with it.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import make_nested_list_of_images
from transformers.processing_utils import ProcessorMixin

from .clip import VlmhubCLIPImageProcessor

IMAGE_TOKEN = "<image>"
END_OF_CHUNK = "<|endofchunk|>"
# BOS, then per turn open_flamingo's VQA prompt: images as <image>, questions "Question:{q} ", answers
# "Short answer:{a}<|endofchunk|>" (the chunk ends with the answer); the generation prompt is "Short answer:".
CHAT_TEMPLATE = (
    "{{- bos_token or '' }}"
    "{%- for m in messages %}{%- set parts = [{'type': 'text', 'text': m['content']}] if m['content'] is string "
    "else m['content'] %}{%- for c in parts %}"
    "{%- if c['type'] == 'image' %}{{- '<image>' }}"
    "{%- elif c['type'] == 'text' and m['role'] == 'user' %}{{- 'Question:' + c['text'] + ' ' }}"
    "{%- elif c['type'] == 'text' and m['role'] == 'assistant' %}"
    "{{- 'Short answer:' + c['text'] + '<|endofchunk|>' }}"
    "{%- elif c['type'] == 'text' %}{{- c['text'] + ' ' }}{%- endif %}{%- endfor %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Short answer:' }}{%- endif %}"
)


class VlmhubFlamingoImageProcessor(VlmhubCLIPImageProcessor):
    """open_clip's preprocess: bicubic shortest-side resize, torchvision-rounded centre crop, OpenAI CLIP mean/std
    (224 px by default). Returns pixel_values (N, 3, H, W); the processor arranges them as vision_x."""


def few_shot_prompt(demonstrations, query_text: str = "", query_image=None) -> tuple[str, list]:
    """[(image, text), ...] -> ("<image>{text}<|endofchunk|>" * n + "<image>{query_text}", images in order).
    Without query_image the query is text only (no trailing <image>)."""
    parts, images = [], []
    for k, demo in enumerate(demonstrations):
        if len(demo) != 2:
            raise ValueError(f"demonstration {k} must be an (image, text) pair, got {len(demo)} items")
        image, text = demo
        parts.append(f"{IMAGE_TOKEN}{text}{END_OF_CHUNK}")
        images.append(image)
    if query_image is not None:
        parts.append(IMAGE_TOKEN)
        images.append(query_image)
    return "".join(parts) + query_text, images


class VlmhubFlamingoProcessor(ProcessorMixin):
    """VlmhubFlamingoImageProcessor + any tokenizer that knows `<image>` and `<|endofchunk|>`."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = CHAT_TEMPLATE, **kwargs):
        self.image_token = IMAGE_TOKEN
        self.end_of_chunk_token = END_OF_CHUNK
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    @property
    def image_token_id(self) -> int:
        return self._token_id(self.image_token)

    @property
    def end_of_chunk_token_id(self) -> int:
        return self._token_id(self.end_of_chunk_token)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token!r} token: add it as a special token first")
        return token_id

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        texts = None if text is None else ([text] if isinstance(text, str) else list(text))
        return_tensors = kwargs.pop("return_tensors", None)
        data = {}
        if images is not None:
            nested = make_nested_list_of_images(self.image_processor.fetch_images(images))
            if texts is not None:
                self._check_counts(texts, nested)
            data["pixel_values"] = self._vision_x(nested)
        if texts is not None:
            data.update(self.tokenizer(texts, **kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def few_shot(self, demonstrations, query_text: str = "", query_image=None, **kwargs) -> BatchFeature:
        """Tokenised few-shot prompt and its images: see `few_shot_prompt`."""
        prompt, images = few_shot_prompt(demonstrations, query_text, query_image)
        return self(images=[images] if images else None, text=prompt, **kwargs)

    def _vision_x(self, nested) -> np.ndarray:
        """Per-sample image lists -> (B, max images, 1, 3, H, W) float32, zero images as padding."""
        flat = [image for sample in nested for image in sample]
        pixels = self.image_processor(flat, return_tensors="pt")["pixel_values"]  # (N, 3, H, W)
        out = torch.zeros(len(nested), max(len(s) for s in nested), 1, *pixels.shape[1:])
        start = 0
        for b, sample in enumerate(nested):
            out[b, : len(sample), 0] = pixels[start : start + len(sample)]
            start += len(sample)
        return out.numpy()

    def _check_counts(self, texts: list[str], nested) -> None:
        in_text = [t.count(self.image_token) for t in texts]
        given = [len(sample) for sample in nested]
        if in_text != given:
            raise ValueError(f"each image needs one {self.image_token} in its text: the texts have {in_text} "
                             f"{self.image_token} tokens per sample but {given} images were given per sample")

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        return self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self):
        return self.tokenizer.model_input_names + ["pixel_values"]


__all__ = ["VlmhubFlamingoImageProcessor", "VlmhubFlamingoProcessor", "few_shot_prompt"]
