"""Conversion of released checkpoints into vlmhub models: `python -m vlmhub.conversion <source> --input --output`."""

from .engine import ConversionError, Rule, apply_table, load_into, write_atomic
from .sources import SOURCES


def convert(source: str, input_path, output_dir=None, overwrite: bool = False, **options):
    """Convert `input_path` of format `source`; write model (+ processor) to `output_dir` atomically if given."""
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {sorted(SOURCES)}")
    model, processor = SOURCES[source].convert(input_path, **options)
    if output_dir is not None:

        def write(tmp):
            model.save_pretrained(tmp)
            if processor is not None:
                processor.save_pretrained(tmp)

        write_atomic(output_dir, write, overwrite=overwrite)
    return model, processor


__all__ = ["SOURCES", "ConversionError", "Rule", "apply_table", "convert", "load_into", "write_atomic"]
