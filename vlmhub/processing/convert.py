"""Carrying transformers' preprocessing settings and tokenizer over to our processor classes."""

import inspect
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer

from .clip import VlmhubCLIPImageProcessor, VlmhubCLIPProcessor
from .vit import VlmhubViTImageProcessor

IMAGE_PROCESSORS = {"vit": VlmhubViTImageProcessor, "clip": VlmhubCLIPImageProcessor}
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def processor_from_transformers(folder: str | Path, model_type: str):
    """Our image processor (and VlmhubCLIPProcessor with the saved tokenizer) for a saved transformers folder; None when
    the folder holds no preprocessing files."""
    folder = Path(folder)
    if not any((folder / name).exists() for name in PROCESSOR_FILES):
        return None
    theirs = AutoImageProcessor.from_pretrained(folder).to_dict()
    ours = IMAGE_PROCESSORS[model_type]
    accepted = set(inspect.signature(ours.__init__).parameters) | set(ours().to_dict())
    image_processor = ours(**{k: v for k, v in theirs.items() if k in accepted and not k.startswith("_")})
    if model_type != "clip" or not any((folder / name).exists() for name in TOKENIZER_FILES):
        return image_processor
    return VlmhubCLIPProcessor(image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(folder))
