"""The benchmark suite's measuring helpers: exact peak tensor memory, paired ratios and their spread, verdicts; and
the peak tensor memory of our vision towers against transformers' on the same weights (deterministic, so a test)."""

import sys
from pathlib import Path

import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import common  # noqa: E402
import run  # noqa: E402

MB = 2**20


def test_peak_tensor_bytes_counts_live_tensors_op_by_op():
    x = torch.randn(256, 1024)  # 1 MiB, made before: not counted

    def work():
        y = x * 2  # 1 MiB
        z = y + 1  # 2 MiB live
        del y  # 1 MiB
        z.mul_(3)  # in place: nothing new
        view = z.t()  # a view: nothing new
        return view.contiguous()  # a copy: 2 MiB live, the peak

    assert common.peak_tensor_bytes(work) == 2 * MB
    assert common.peak_tensor_bytes(lambda: x.t()) == 0


def test_peak_tensor_bytes_is_the_same_on_every_run():
    model = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8))
    pixels = torch.randn(2, 3, 32, 32)
    assert len({common.peak_tensor_bytes(lambda: model(pixels)) for _ in range(3)}) == 1


def test_compare_gives_paired_rounds_and_their_median_ratio():
    row = common.compare(lambda: None, lambda: None, repeats=5, warmup=0, min_seconds=0)
    assert len(row["rounds"]) == 5 and row["theirs"] > 0 and row["ours"] > 0
    row = {"theirs": 1.0, "ours": 1.0, "rounds": [(1.0, 0.5), (1.0, 0.9), (2.0, 2.0), (1.0, 1.2), (1.0, 3.0)]}
    assert common.ratio(row) == 1.0  # the median of 0.5, 0.9, 1.0, 1.2, 3.0
    q1, q3 = common.ratio_spread(row)
    assert q1 < 1.0 < q3
    assert common.ratio({"theirs": 2.0, "ours": 1.0}) == 0.5  # no rounds: the ratio of the values
    assert common.ratio_spread({"theirs": 2.0, "ours": 1.0}) is None


@pytest.mark.parametrize("rounds, verdict", [
    ([(1.0, 0.9)] * 4, "met"),
    ([(1.0, 0.95), (1.0, 1.02), (1.0, 1.03), (1.0, 1.04)], run.NEAR_MISS),  # a quarter of the rounds met the goal
    ([(1.0, 1.1), (1.0, 1.2), (1.0, 1.3), (1.0, 1.4)], "MISSED"),
])
def test_verdicts_read_the_paired_rounds(rounds, verdict):
    row = {"name": "x", "size": "tiny", "kind": "prefill", "theirs": 1.0, "ours": 1.0, "rounds": rounds}
    assert run.verdict(row) == verdict
    assert run.verdict(dict(row, kind="memory")) == ""  # no goal


def test_the_report_shows_spread_floor_and_verdict():
    row = {"name": "tower", "size": "mid", "kind": "vision", "theirs": 1.0, "ours": 0.97, "floor": 0.93,
           "rounds": [(1.0, 0.9), (1.0, 0.9), (1.0, 1.0), (1.0, 1.0)]}
    text = run.report([("Family", [row], 1.0, None)], "mid", 1.0)
    assert "| 0.950 | 0.900–1.000 | 0.930 | ≤ 0.8 | MISSED |" in text
    assert "Goals met: 0 of 1 rows with a goal; of the 1 missed, 0 within the spread of their rounds." in text
    assert "- MISSED: Family: tower (mid; 0.950 > 0.8, spread 0.900–1.000, floor 0.930)" in text


def _vit_pair():
    hf = transformers.ViTModel(transformers.ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8))
    return common.pair(hf)


def test_our_vit_holds_no_more_tensor_memory_than_transformers():
    """The residual branches' outputs are freed before the MLP runs and the patches before the position sum, as in
    transformers' ViT: the peak is the same, byte for byte."""
    hf, ours = _vit_pair()
    pixels = torch.randn(4, 3, 32, 32)
    theirs_peak, ours_peak = (common.peak_tensor_bytes(lambda m=m: m(pixels)) for m in (hf, ours))
    assert ours_peak <= theirs_peak


def test_our_mllama_tower_holds_less_tensor_memory_than_transformers():
    import mllama as bench  # benchmarks/mllama.py

    hf, ours = bench.models("tiny")
    x = bench.inputs("tiny", [(2, 2)])
    tiles = [x[key] for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")]
    theirs_peak = common.peak_tensor_bytes(lambda: hf.model.vision_model(*tiles))
    ours_peak = common.peak_tensor_bytes(lambda: ours.vision_model(*tiles))
    assert ours_peak < theirs_peak


def test_the_suite_runs_a_family_end_to_end(tmp_path):
    """`make bench` on one family: the report and the chart are written and nothing failed."""
    out, chart = tmp_path / "BENCHMARKS.md", tmp_path / "ratios.png"
    assert run.main(["--sizes", "tiny", "--families", "blip2", "--out", str(out), "--chart", str(chart)]) == 0
    text = out.read_text()
    assert "## BLIP-2" in text and "FAILED" not in text and chart.stat().st_size > 0
    assert "| BLIP-2 forward peak memory (batch 2) | peak memory | tiny |" in text


def test_the_gpu_script_runs_end_to_end_on_tiny_shapes(tmp_path):
    """The script a lent GPU runs (its minutes are few): both models, both implementations, both caches, checked
    here on tiny shapes on the CPU."""
    import gpu  # benchmarks/gpu.py

    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--tiny", "--new-tokens", "3", "--repeats", "1", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| llava-7b", "| mllama-11b"))]
    assert len(rows) == 8  # 2 models x 2 implementations x 2 caches
