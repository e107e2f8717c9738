"""The engine's accounting and atomic writing: bad checkpoints fail loudly and leave nothing on disk."""

import pytest
import torch

from vlmhub.conversion import ConversionError, Rule, apply_table, convert, write_atomic
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.conversion.checkpoint import read_state_dict
from vlmhub.conversion.transforms import flax_heads_in, flax_heads_out, split_qkv
from tests.conftest import FIXTURES

TABLE = [Rule(r"a\.(\d+)\.w", "layers.{0}.weight"), Rule(r"qkv", ("q", "k", "v"), split_qkv), Rule(r"junk", None)]
EXPECTED = {"layers.0.weight": (2, 2), "q": (1, 2), "k": (1, 2), "v": (1, 2)}


def source(**extra):
    return {"a.0.w": torch.ones(2, 2), "qkv": torch.arange(6.0).reshape(3, 2), "junk": torch.zeros(1), **extra}


def test_table_maps_splits_and_drops():
    out = apply_table(source(), TABLE, EXPECTED)
    assert set(out) == set(EXPECTED)
    assert out["k"].tolist() == [[2.0, 3.0]]


def test_unknown_missing_and_shape_problems_are_all_listed():
    bad = source(**{"mystery.weight": torch.ones(1)})
    bad["a.0.w"] = torch.ones(3, 2)
    del bad["qkv"]
    with pytest.raises(ConversionError) as err:
        apply_table(bad, TABLE, EXPECTED)
    message = str(err.value)
    assert "mystery.weight" in message  # unknown source key
    assert "not filled: k, q, v" in message  # unfilled targets
    assert "layers.0.weight: checkpoint (3, 2), model (2, 2)" in message


def test_flax_attention_kernels_round_trip():
    w = torch.randn(8, 8)  # Linear (out=heads*hd, in=D)
    assert torch.equal(flax_heads_in(w.t().reshape(8, 2, 4)), w)
    assert torch.equal(flax_heads_out(w.t().reshape(2, 4, 8)), w)


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    def failing(folder):
        (folder / "half.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "out", failing)
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_refuses_to_clobber(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "out", lambda folder: None)
    write_atomic(tmp_path / "out", lambda folder: (folder / "new.txt").write_text("new"), overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_failure_on_unknown_key_writes_nothing(tmp_path, capsys):
    sd = torch.load(FIXTURES / "openai-clip" / "model.pt", weights_only=True)
    sd["visual.extra_adapter.weight"] = torch.ones(1)
    torch.save(sd, tmp_path / "bad.pt")
    out = tmp_path / "converted"
    assert convert_cli(["openai-clip", "--input", str(tmp_path / "bad.pt"), "--output", str(out)]) == 1
    assert "visual.extra_adapter.weight" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_shape_mismatch_names_the_key(tmp_path):
    sd = torch.load(FIXTURES / "openai-clip" / "model.pt", weights_only=True)
    sd["visual.ln_post.weight"] = torch.ones(7)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ConversionError, match=r"vision_model.post_layernorm.weight: checkpoint \(7,\)"):
        convert("openai-clip", tmp_path / "bad.pt")


def test_unsafe_pickles_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pt")


def test_missing_input_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert("timm-vit", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="Unknown source"):
        convert("caffe", tmp_path)
