"""Reading checkpoints of any released format into a flat {name: tensor} dict, without running pickled code."""

import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors / .bin / .pt / .pth / .npz file, a sharded-index .json, or a folder holding one of these."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.is_dir():
        return read_state_dict(_weights_file(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_file(path)
    if suffix == ".json":
        return _read_sharded(path)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    if _is_torchscript(path):
        return _read_torchscript(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
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


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    weight_map = json.loads(index.read_text())["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        state.update(read_state_dict(index.parent / shard))
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
