"""Timing helpers shared by the benchmarks: interleaved runs, medians, ratios ours / transformers."""

import statistics
import tempfile
import time

import torch


def interleaved(fns: dict, repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, running them in turn so drift hits all alike."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | size | transformers (ms) | vlmhub (ms) | ratio vlmhub/transformers |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['size']} | {r['theirs'] * 1e3:.2f} | {r['ours'] * 1e3:.2f} | {r['ours'] / r['theirs']:.3f} |")
    return "\n".join(lines)


def pair(hf_model, source: str = "transformers"):
    """(transformers model, vlmhub model) with the same weights (converted through vlmhub.convert), both in eval mode."""
    from vlmhub.conversion import convert

    with tempfile.TemporaryDirectory() as folder:
        hf_model.save_pretrained(folder)
        ours, _ = convert(source, folder)
    return hf_model.eval(), ours.eval()


def generation_rate(model, inputs: dict, new_tokens: int) -> float:
    """Seconds per greedy generation of `new_tokens` tokens (min_new_tokens forces the full length)."""
    start = time.perf_counter()
    model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start
