"""Conversion of released checkpoints into vlmhub models: `python -m vlmhub.conversion <source> --input --output`."""

from pathlib import Path

from .engine import ConversionError, Rule, apply_table, load_into, write_atomic
from .sources import SOURCES


def convert(source: str, input_path, output_dir=None, overwrite: bool = False, check: bool = False,
            remote_code: bool = False, **options):
    """Convert `input_path` of format `source`; write model (+ processor) to `output_dir` atomically if given.

    check: also run the original implementation (transformers source) on a tiny random input and record the max abs
    difference; the provenance (source, input, parity) lands in the config and the model card renders it.
    remote_code: also write the flat code files and auto_map that let the folder load without vlmhub."""
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; choose one of {sorted(SOURCES)}")
    model, processor = SOURCES[source].convert(input_path, **options)
    from .. import hub  # lazy: vlmhub.hub imports this package

    parity = hub.parity_check(model, source, input_path) if check else None
    hub.record_provenance(model.config, source, str(input_path), parity)
    if output_dir is not None:

        def write(tmp):
            model.save_pretrained(tmp)
            if processor is not None:
                processor.save_pretrained(tmp)
            name = Path(output_dir).name  # the card's usage snippet names the final folder, not tmp
            if remote_code:
                hub.export_remote_code(tmp, name)  # re-renders the card too
            else:
                hub.write_model_card(model, tmp, name)

        write_atomic(output_dir, write, overwrite=overwrite)
    return model, processor


__all__ = ["SOURCES", "ConversionError", "Rule", "apply_table", "convert", "load_into", "write_atomic"]
