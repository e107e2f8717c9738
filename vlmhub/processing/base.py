"""`from_pretrained` of our processors and image processors also reads transformers' own checkpoint folders."""

from __future__ import annotations

import json
from pathlib import Path

from transformers.utils import cached_file

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class TransformersFormatMixin:
    """Put first in the bases of a processor or image processor class: `from_pretrained` of a folder or Hub id whose
    config.json has transformers' own model_type for the family (`clip`, `llava`, ...) gives our class with the
    same preprocessing settings and tokenizer; our own folders load as usual."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        model_type = saved_model_type(pretrained_model_name_or_path, kwargs)
        if model_type is not None and not model_type.startswith("vlmhub_") and not args:
            # Lazy: vlmhub.hub reads the conversion tables (processing does not import conversion otherwise).
            # Remote-code copies of this file replace it by an ImportError (they load our format only).
            from ..hub import processor_from_transformers_format

            return processor_from_transformers_format(cls, pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


def saved_model_type(name, kwargs: dict) -> str | None:
    """The model_type in the config.json of a folder or Hub repo; None when it has none (processor-only repos)."""
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        path = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False, **hub)
    except OSError:  # unreachable or not a repo: transformers' own loading reports it
        return None
    return json.loads(Path(path).read_text()).get("model_type") if path else None
