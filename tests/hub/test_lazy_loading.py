"""Big-checkpoint loading of transformers-format folders through our classes: the checkpoint is memory-mapped, not
read (`read_state_dict(lazy=True)`), so peak memory stays near one checkpoint, renamed tensors are views of the
files, and the loaded parameters are still ordinary writable tensors that never write back to the files."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import vlmhub
from tests.test_hub import hf_llava, llava_inputs, max_diff
from vlmhub.conversion.checkpoint import read_state_dict

ROOT = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
PEAK_RATIO = 1.35  # peak RSS growth over loading and touching every weight, in checkpoints
ANON_RATIO = 0.25  # anonymous (heap) memory still held after loading, in checkpoints: the weights were not copied
# A transformers LLaVA of about 78 MB in fp32 (20M parameters), saved in 20 MB shards.
BIG_VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, image_size=56,
                  patch_size=14, model_type="clip_vision_model")
BIG_TEXT = dict(model_type="llama", hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=1536, vocab_size=4096, pad_token_id=0, eos_token_id=2, bos_token_id=1)
BIG_IMAGE = 4095


def file_mappings(path) -> list[tuple[int, int]]:
    """The address ranges this process has mapped from `path` (Linux)."""
    path, ranges = str(Path(path).resolve()), []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == path:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def maps(tensor: torch.Tensor, path) -> bool:
    return any(start <= tensor.data_ptr() < end for start, end in file_mappings(path))


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mixed_tensors() -> dict[str, torch.Tensor]:
    return {
        "big": torch.randn(64, 128), "half": torch.randn(3, 5).half(), "bf16": torch.randn(7).bfloat16(),
        "ids": torch.arange(6).reshape(2, 3), "mask": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4), "bytes": torch.arange(5, dtype=torch.uint8),
    }


# --- read_state_dict(lazy=True) ---------------------------------------------------------------------------------------


def test_lazy_safetensors_are_private_views_of_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(mixed_tensors(), path)
    before, eager, lazy = digest(path), read_state_dict(path), read_state_dict(path, lazy=True)
    assert lazy.keys() == eager.keys()
    for name, value in eager.items():
        assert lazy[name].dtype == value.dtype and torch.equal(lazy[name], value), name
    if LINUX:
        assert maps(lazy["big"], path)
    lazy["big"].add_(1)  # copy-on-write: the tensor changes, the file does not
    assert torch.equal(lazy["big"], eager["big"] + 1) and digest(path) == before


def test_lazy_torch_checkpoints_are_memory_mapped_and_legacy_ones_still_read(tmp_path):
    state, path = {"w": torch.randn(256, 64), "b": torch.arange(4)}, tmp_path / "new.bin"
    torch.save(state, path)
    torch.save(state, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    before = digest(path)
    for name in ("new.bin", "old.bin"):
        lazy = read_state_dict(tmp_path / name, lazy=True)
        assert lazy.keys() == state.keys() and all(torch.equal(lazy[k], state[k]) for k in state), name
    lazy = read_state_dict(path, lazy=True)
    if LINUX:  # the eager read copies, the lazy one maps
        assert maps(lazy["w"], path) and not maps(read_state_dict(path)["w"], path)
    lazy["w"].mul_(2)
    assert digest(path) == before


# --- through our classes ----------------------------------------------------------------------------------------------


def test_loaded_parameters_are_writable_and_leave_the_checkpoint_unchanged(tmp_path):
    hf = hf_llava()
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("*.safetensors"))
    before = {p: digest(p) for p in shards}
    ours = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path)
    weight = ours.language_model.model.embed_tokens.weight
    if LINUX:  # zero-copy all the way: transformers' loader kept the mapped view as the parameter
        assert any(maps(weight, p) for p in shards)
    reference = weight.detach().clone()
    with torch.no_grad():
        for param in ours.parameters():
            param.add_(1)
    assert torch.equal(weight, reference + 1)
    assert {p: digest(p) for p in shards} == before
    again = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(again.language_model.model.embed_tokens.weight, reference)


def save_as_torch_shards(model, folder: Path, shard: str = "40KB") -> None:
    """transformers writes safetensors only: the same shards as pytorch_model-*.bin with their index."""
    model.save_pretrained(folder, max_shard_size=shard)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    weight_map = {}
    for shard in sorted(set(index["weight_map"].values())):
        name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
        torch.save({k: v.clone() for k, v in load_file(folder / shard).items()}, folder / name)
        weight_map |= {key: name for key, file in index["weight_map"].items() if file == shard}
        (folder / shard).unlink()
    (folder / "model.safetensors.index.json").unlink()
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_sharded_torch_folder_loads_through_our_class(tmp_path):
    hf = hf_llava()
    save_as_torch_shards(hf, tmp_path)
    ours = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path)
    inputs = llava_inputs(ours, next_=False)
    with torch.no_grad():
        assert max_diff(hf(**inputs).logits, ours(**inputs).logits) <= 1e-5


# --- peak memory, measured in a fresh process -------------------------------------------------------------------------

CHILD = r"""
import gc, json, sys
import torch, transformers, vlmhub
from benchmarks.common import _status_kb, peak_rss_delta

IMAGE = int(sys.argv[1])

def measure(folder):
    vlmhub.LlavaForConditionalGeneration.from_pretrained(folder)  # warm-up: lazy imports are not the checkpoint's
    gc.collect()
    got = {}

    def load_and_touch():
        anon = _status_kb("RssAnon")
        got["model"] = model = vlmhub.LlavaForConditionalGeneration.from_pretrained(folder)
        got["anon"] = (_status_kb("RssAnon") - anon) * 1024
        for param in model.parameters():
            param.sum()  # reads every page of every weight

    peak = peak_rss_delta(load_and_touch)
    ours = got["model"]
    pixels = torch.randn(1, 3, ours.config.vision_config.image_size, ours.config.vision_config.image_size)
    with torch.no_grad():
        count = len(ours.get_image_features(pixel_values=pixels).pooler_output[0])
    ids = torch.tensor([[1, 5, 6] + [IMAGE] * count + [7, 8, 9]])
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels)
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        diff = (reference(**inputs).logits - ours(**inputs).logits).abs().max().item()
    return {"peak": peak, "anon": got["anon"], "diff": diff}

print("RESULT " + json.dumps({folder: measure(folder) for folder in sys.argv[2:]}))
"""


def big_llava():
    config = transformers.LlavaConfig(vision_config=BIG_VISION, text_config=BIG_TEXT, image_token_index=BIG_IMAGE)
    return transformers.LlavaForConditionalGeneration(config).eval()


def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS needs Linux's /proc/self/clear_refs")
def test_peak_memory_of_a_sharded_checkpoint_is_about_one_checkpoint(tmp_path):
    hf = big_llava()
    hf.save_pretrained(tmp_path / "safetensors", max_shard_size="20MB")
    save_as_torch_shards(hf, tmp_path / "torch", "20MB")
    del hf
    folders = [tmp_path / "safetensors", tmp_path / "torch"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", CHILD, str(BIG_IMAGE), *map(str, folders)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULT ", 1)[1])
    for folder in folders:
        size, got = checkpoint_bytes(folder), results[str(folder)]
        assert len(list(folder.glob("*-of-*"))) > 1, folder  # sharded
        peak, anon = got["peak"] / size, got["anon"] / size
        print(f"{folder.name}: {size / 2**20:.1f} MB checkpoint, peak RSS growth {peak:.2f}x, heap held {anon:.2f}x, "
              f"max |logits diff| {got['diff']:.1e}")
        assert peak <= PEAK_RATIO, (folder.name, peak)
        assert anon <= ANON_RATIO, (folder.name, anon)
        assert got["diff"] <= 1e-5, (folder.name, got["diff"])
