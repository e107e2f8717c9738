"""The conversion engine: apply a key table to a source state dict, account for every key, write atomically.

A table is a list of `Rule`s. A rule's `source` is a regular expression matched against the whole source key;
its `target` is a template filled with the match's groups (`{0}`, `{1}`, ...), a tuple of templates when the
transform splits one tensor into several, or None to drop the key on purpose. The engine refuses to produce a
model unless every source key was consumed, every target key filled, and every shape matches.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


class ConversionError(ValueError):
    """A checkpoint that does not map cleanly onto the target model; the message lists every problem."""


@dataclass(frozen=True)
class Rule:
    source: str
    target: str | tuple[str, ...] | None
    transform: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "_pattern", re.compile(self.source))


def apply_table(state_dict: dict, table: list[Rule], expected: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map `state_dict` through `table` onto a model whose parameters have the shapes in `expected`."""
    out, unknown, problems = {}, [], []
    for key, tensor in state_dict.items():
        rule, match = _find_rule(table, key)
        if rule is None:
            unknown.append(key)
            continue
        if rule.target is None:
            continue
        targets = rule.target if isinstance(rule.target, tuple) else (rule.target,)
        values = rule.transform(tensor) if rule.transform else tensor
        values = values if isinstance(values, tuple) else (values,)
        for template, value in zip(targets, values, strict=True):
            name = template.format(*match.groups())
            if name in out:
                problems.append(f"target {name} filled twice (second time from {key})")
            out[name] = value
    if unknown:
        problems.append("unknown source keys (no rule consumes them): " + ", ".join(sorted(unknown)))
    missing = sorted(set(expected) - set(out))
    if missing:
        problems.append("target keys not filled: " + ", ".join(missing))
    extra = sorted(set(out) - set(expected))
    if extra:
        problems.append("rules produced keys the model does not have: " + ", ".join(extra))
    for name in sorted(set(out) & set(expected)):
        if tuple(out[name].shape) != tuple(expected[name]):
            problems.append(f"shape mismatch for {name}: checkpoint {tuple(out[name].shape)}, model {tuple(expected[name])}")
    if problems:
        raise ConversionError("Checkpoint does not match the target model:\n- " + "\n- ".join(problems))
    return out


def _find_rule(table, key):
    for rule in table:
        match = rule._pattern.fullmatch(key)
        if match:
            return rule, match
    return None, None


def expected_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    """Every persistent tensor the model saves, tied weights counted once under their first name."""
    return {name: t.shape for name, t in model.state_dict().items()}


def load_into(model: torch.nn.Module, state_dict: dict, table: list[Rule]) -> torch.nn.Module:
    """Convert `state_dict` with `table` and load it into `model` strictly, keeping the model's dtypes."""
    converted = apply_table(state_dict, table, expected_shapes(model))
    own = model.state_dict()
    converted = {k: v.to(own[k].dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model


def write_atomic(output: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call write(tmp_dir) and move tmp_dir to `output` only if it returns; nothing is left behind on failure."""
    output = Path(output).resolve()
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        write(tmp)
        if output.exists():
            backup = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, backup)
            os.replace(tmp, output)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
