"""Timing helpers shared by the benchmarks: interleaved runs, medians, ratios ours / transformers."""

import statistics
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
