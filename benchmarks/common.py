"""Timing helpers shared by the benchmarks: interleaved runs, medians, ratios ours / transformers."""

import statistics
import tempfile
import time

import torch


def interleaved(fns: dict, repeats: int = 10, warmup: int = 2, min_seconds: float = 1.0) -> dict[str, float]:
    """Median seconds per call of each fn, running them in turn so drift hits all alike: `repeats` rounds, and more
    while the rounds so far took under `min_seconds` (fast calls get enough samples for a stable median)."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times = {name: [] for name in fns}
        begin = time.perf_counter()
        while len(times[next(iter(fns))]) < repeats or time.perf_counter() - begin < min_seconds:
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fmt(value, unit: str = "ms") -> str:
    """Seconds as ms, bytes as MB; "n/a" for an unmeasured value."""
    if value is None:
        return "n/a"
    return f"{value / 2**20:.2f}" if unit == "MB" else f"{value * 1e3:.2f}"


def ratio(row: dict) -> float | None:
    """ours / theirs, None where either is unmeasured or the baseline is zero."""
    if row.get("ours") is None or not row.get("theirs"):
        return None
    return row["ours"] / row["theirs"]


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | size | transformers | vlmhub | unit | ratio vlmhub/transformers |", "|---|---|---|---|---|---|"]
    for r in rows:
        unit, q = r.get("unit", "ms"), ratio(r)
        lines.append(f"| {r['name']} | {r['size']} | {fmt(r['theirs'], unit)} | {fmt(r['ours'], unit)} | {unit} | "
                     f"{'n/a' if q is None else f'{q:.3f}'} |")
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


def _status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (Linux), e.g. VmRSS or VmHWM."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_rss_delta(fn) -> float | None:
    """Bytes the resident set grows to above its level before one call of fn (Linux: the peak is reset through
    /proc/self/clear_refs and freed heap is trimmed first); None where the kernel does not offer that."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
    except (OSError, RuntimeError):
        return None
    with torch.inference_mode():
        fn()
    return (_status_kb("VmHWM") - before) * 1024.0


def memory_row(name: str, size: str, fns: dict) -> dict:
    """A row of peak RSS deltas (bytes) for {"theirs": fn, "ours": fn}, each measured once after a warm-up call."""
    with torch.inference_mode():
        for fn in fns.values():
            fn()
    peaks = {key: peak_rss_delta(fn) for key, fn in fns.items()}
    return dict(name=name, size=size, kind="memory", unit="MB", **peaks)


def resolve_sizes(sizes, mid: str) -> list[str]:
    """Size names a family knows, from "tiny,mid" (a string or a list); "mid" is the family's mid-size config."""
    names = sizes.split(",") if isinstance(sizes, str) else list(sizes)
    return [mid if name == "mid" else name for name in names]


def save_report(path, report: str) -> None:
    """Print a benchmark report and write it to `path` (folders made as needed)."""
    from pathlib import Path

    print(report)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(report + "\n")
