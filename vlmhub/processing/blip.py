"""BLIP preprocessing: squash to 384 px (bicubic, CLIP mean/std) and BERT WordPiece with BLIP's [DEC] / [ENC].

The model puts [DEC] (captioning) or [ENC] (matching) in place of the first token itself, so the processor only
tokenizes plainly (`[CLS] text [SEP]`), as transformers' BlipProcessor does.
"""

from __future__ import annotations

from pathlib import Path

from transformers.processing_utils import ProcessorMixin

from .base import TransformersFormatMixin
from .blip2 import VlmhubBlip2ImageProcessor
from .wordpiece import build_wordpiece_tokenizer


class VlmhubBlipImageProcessor(VlmhubBlip2ImageProcessor):  # TransformersFormatMixin comes with the base
    size = {"height": 384, "width": 384}


def build_blip_tokenizer(vocab, model_max_length: int = 512):
    """bert-base-uncased WordPiece + [DEC] (bos, id 30522 with BERT's vocabulary) and [ENC] (30523)."""
    return build_wordpiece_tokenizer(vocab, model_max_length=model_max_length, extra_special_tokens=("[DEC]", "[ENC]"),
                                     bos_token="[DEC]")


class VlmhubBlipProcessor(TransformersFormatMixin, ProcessorMixin):
    """VlmhubBlipImageProcessor + a WordPiece tokenizer; routes `images` and `text` like transformers' BlipProcessor
    (no token_type_ids: the model takes none)."""

    text_kwargs = {"return_token_type_ids": False}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)


def processor_from_transformers(folder: str | Path) -> VlmhubBlipProcessor | None:
    """Our processor for a saved transformers blip folder (BlipProcessor: BlipImageProcessor settings + a BERT
    tokenizer); None when the folder holds no preprocessing files."""
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(folder)
    if not (folder / "processor_config.json").exists() and not (folder / "preprocessor_config.json").exists():
        return None
    theirs = AutoImageProcessor.from_pretrained(folder).to_dict()
    shared = (set(VlmhubBlipImageProcessor().to_dict()) - {"image_processor_type"}) & set(theirs)
    image_processor = VlmhubBlipImageProcessor(**{key: theirs[key] for key in shared})
    return VlmhubBlipProcessor(image_processor, AutoTokenizer.from_pretrained(folder))


__all__ = ["VlmhubBlipImageProcessor", "VlmhubBlipProcessor", "build_blip_tokenizer", "processor_from_transformers"]
