"""Reading checkpoints of any released format into a flat {name: tensor} dict, without running pickled code.

Safetensors files are never copied: safetensors maps each file privately (copy-on-write), so every tensor is a view of
it, nothing is read until it is used, renaming costs no memory and writing into a tensor never changes the file.
`read_state_dict(path, lazy=True)` maps torch zip checkpoints the same way (`torch.load(mmap=True)`); other formats
are read whole.
"""

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def read_state_dict(path: str | Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    """A .safetensors / .bin / .pt / .pth / .npz file, a sharded-index .json, or a folder holding one of these.

    lazy: map torch zip files into memory instead of reading them (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.is_dir():
        return read_state_dict(_weights_file(path), lazy)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_file(path)  # safetensors maps the file privately: tensors are views, copy-on-write
    if suffix == ".json":
        return _read_sharded(path, lazy)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    if _is_torchscript(path):
        return _read_torchscript(path)
    try:
        # mmap needs the zip format (torch >= 1.6); older pickles are read whole
        mmap = lazy and zipfile.is_zipfile(path)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise ValueError(f"Could not read {path} as a torch checkpoint (weights_only=True): {err}") from err
    for wrapper in ("state_dict", "model", "module"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return dict(state)


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"No model.safetensors or pytorch_model.bin (or a sharded index) in {folder}")


def _read_sharded(index: Path, lazy: bool = False) -> dict[str, torch.Tensor]:
    weight_map = json.loads(index.read_text())["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(index.parent / shard, lazy))
    return state


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a code/ folder (a plain torch.save zip has only data.pkl and data/)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """OpenAI ships CLIP as TorchScript. torch.jit.load deserialises the graph without unpickling Python objects;
    we only read its tensors and never call its methods."""
    module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
