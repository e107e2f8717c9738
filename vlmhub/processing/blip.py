"""BLIP preprocessing: squash to 384 px (bicubic, CLIP mean/std) and BERT WordPiece with BLIP's [DEC] / [ENC].

The model puts [DEC] (captioning) or [ENC] (matching) in place of the first token itself, so the processor only
tokenizes plainly (`[CLS] text [SEP]`), as transformers' BlipProcessor does.
"""

from __future__ import annotations

from transformers.processing_utils import ProcessorMixin

from .blip2 import VlmhubBlip2ImageProcessor
from .wordpiece import build_wordpiece_tokenizer


class VlmhubBlipImageProcessor(VlmhubBlip2ImageProcessor):
    size = {"height": 384, "width": 384}


def build_blip_tokenizer(vocab, model_max_length: int = 512):
    """bert-base-uncased WordPiece + [DEC] (bos, id 30522 with BERT's vocabulary) and [ENC] (30523)."""
    return build_wordpiece_tokenizer(vocab, model_max_length=model_max_length, extra_special_tokens=("[DEC]", "[ENC]"),
                                     bos_token="[DEC]")


class VlmhubBlipProcessor(ProcessorMixin):
    """VlmhubBlipImageProcessor + a WordPiece tokenizer; routes `images` and `text` like transformers' BlipProcessor."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)


__all__ = ["VlmhubBlipImageProcessor", "VlmhubBlipProcessor", "build_blip_tokenizer"]
