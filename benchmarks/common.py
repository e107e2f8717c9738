"""Timing helpers shared by the benchmarks: interleaved runs, paired ratios ours / transformers and their spread,
exact peak tensor memory, and the floors a ratio cannot go below while doing the work both sides share."""

import contextlib
import statistics
import tempfile
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


def _rounds(fns: dict, repeats: int, warmup: int, min_seconds: float) -> dict[str, list[float]]:
    """Seconds of every call of each fn, run in turn (one round = each fn once) so that drift hits all alike:
    `repeats` rounds, and more while the rounds so far took under `min_seconds`."""
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
    return times


def interleaved(fns: dict, repeats: int = 10, warmup: int = 2, min_seconds: float = 1.0) -> dict[str, float]:
    """Median seconds per call of each fn over interleaved rounds (fast calls get enough samples for a stable
    median: rounds go on until they fill `min_seconds`)."""
    return {name: statistics.median(t) for name, t in _rounds(fns, repeats, warmup, min_seconds).items()}


def compare(theirs, ours, repeats: int = 10, warmup: int = 2, min_seconds: float = 1.0) -> dict:
    """{"theirs": median s, "ours": median s, "rounds": [(theirs s, ours s) per round]} of interleaved rounds; the
    rounds give the row its paired ratios (`ratio`, `ratio_spread`)."""
    t = _rounds({"theirs": theirs, "ours": ours}, repeats, warmup, min_seconds)
    return {"theirs": statistics.median(t["theirs"]), "ours": statistics.median(t["ours"]),
            "rounds": list(zip(t["theirs"], t["ours"]))}


def fmt(value, unit: str = "ms") -> str:
    """Seconds as ms, bytes as MB; "n/a" for an unmeasured value."""
    if value is None:
        return "n/a"
    return f"{value / 2**20:.2f}" if unit == "MB" else f"{value * 1e3:.2f}"


def paired_ratios(row: dict) -> list[float]:
    """ours / theirs of each interleaved round of a row made by `compare` (empty for other rows)."""
    return [ours / theirs for theirs, ours in row.get("rounds", ()) if theirs > 0]


def ratio(row: dict) -> float | None:
    """The median of the paired per-round ratios where the row has rounds (steadier than a ratio of medians when the
    machine drifts), else ours / theirs; None where either is unmeasured or the baseline is zero."""
    paired = paired_ratios(row)
    if paired:
        return statistics.median(paired)
    if row.get("ours") is None or not row.get("theirs"):
        return None
    return row["ours"] / row["theirs"]


def ratio_spread(row: dict) -> tuple[float, float] | None:
    """(first, third) quartile of the paired per-round ratios: half the rounds fall between them. None with fewer
    than 4 rounds."""
    paired = paired_ratios(row)
    if len(paired) < 4:
        return None
    q1, _, q3 = statistics.quantiles(paired, n=4)
    return q1, q3


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


class _LiveTensors(TorchDispatchMode):
    """Counts the bytes of the tensor storages that ops create while the mode is active, and the most alive at once.
    An output sharing storage with an input (a view, an in-place op) is nothing new; a storage leaves the count when
    it is freed (torch keeps a storage's Python object for as long as the storage lives, so a finalizer sees it go)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.storages = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.storages.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self.storages or storage.data_ptr() in inputs or not storage.nbytes():
                continue
            self.storages.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out


def peak_tensor_bytes(fn) -> int:
    """The most bytes of tensors that one call of fn (in inference mode) holds at once: every tensor the call's ops
    create counts from its creation until it is freed, the outputs included. Exact and the same on every run, unlike
    the resident set; what a kernel allocates for itself (a GEMM's packing buffers) is not seen."""
    counter = _LiveTensors()
    with torch.inference_mode(), counter:
        result = fn()
    del result
    return counter.peak


def memory_row(name: str, size: str, fns: dict) -> dict:
    """A row of peak tensor memory (bytes, `peak_tensor_bytes`) for {"theirs": fn, "ours": fn}, after a warm-up
    call of each (lazy initialisation is not the call's memory)."""
    with torch.inference_mode():
        for fn in fns.values():
            fn()
    return dict(name=name, size=size, kind="memory", unit="MB", **{key: peak_tensor_bytes(fn) for key, fn in fns.items()})


def real_images(count: int = 16, seed: int = 0) -> list:
    """`count` random RGB PIL images of random sizes, 200 to 1200 px a side (photos, not the model's square crops)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8))
            for h, w in rng.integers(200, 1200, (count, 2))]


def preprocessing_row(name: str, theirs, ours, images: list, goal: float | None = None, repeats: int = 5) -> dict:
    """A preprocessing row: the two image processors on the same images (return_tensors="pt"), interleaved, with the
    floor of the shared work; the name says whether their pixel_values are identical."""
    def call(processor):
        return lambda: processor(images, return_tensors="pt")

    a, b = call(theirs)()["pixel_values"], call(ours)()["pixel_values"]
    same = a.shape == b.shape and torch.equal(a, b)
    row = dict(name=f"{name} ({len(images)} images, 200-1200 px; identical: {same})", size="real", kind="preprocessing",
               **compare(call(theirs), call(ours), repeats=repeats, warmup=1))
    if goal is not None:
        row["goal"] = goal
    return preprocessing_floor(row, call(ours), tuple(b.shape))


# --- floors: the work both sides must do, timed in the same run -------------------------------------------------------

# The compute kernels a vision tower cannot avoid (matrix products, the patch convolution, fused attention): leaf ops,
# so self times do not overlap.
KERNEL_OPS = frozenset({
    "aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
    "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
})


def kernel_share(fn) -> float:
    """The fraction of one call of fn (wall time, under the torch profiler) spent inside KERNEL_OPS (self times)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    return sum(event.self_cpu_time_total for event in prof.key_averages() if event.key in KERNEL_OPS) * 1e-6 / wall


def kernel_floor(row: dict, fn, runs: int = 3) -> dict:
    """`row` with "floor": the baseline's share of time in the compute kernels (median of `runs` profiled calls of
    its fn, each against its own wall time, so a noisy moment of the timed rounds does not move it), the ratio a model
    running the same kernels can at best reach."""
    return dict(row, floor=min(statistics.median(kernel_share(fn) for _ in range(runs)), 1.0))


def tower_row(name: str, size: str, theirs, ours, repeats: int) -> dict:
    """A vision-tower row: the two towers interleaved, with the kernel floor of theirs except at the tiny size, where
    per-op overhead (and the profiler's own) dominates the kernels."""
    row = dict(name=name, size=size, kind="vision", **compare(theirs, ours, repeats=repeats))
    return row if size == "tiny" else kernel_floor(row, theirs)


@contextlib.contextmanager
def time_spent_in(owner, name: str):
    """Accumulate the seconds spent in `owner.name` (a function attribute, e.g. PIL.Image.Image.resize) while the
    block runs: yields a one-item list holding the total. The attribute is restored on exit."""
    original, spent = getattr(owner, name), [0.0]

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        yield spent
    finally:
        setattr(owner, name, original)


def preprocessing_floor(row: dict, ours, output_shape: tuple[int, ...], runs: int = 5) -> dict:
    """`row` with "floor": (Pillow's resizes in one call of our processor + one write of a float32 array of
    `output_shape`) over the baseline's median time. Both processors make the same pixels, so both do at least these
    resizes (Pillow's, on 8-bit images) and write the output once; the floor is the ratio that work allows."""
    import numpy as np
    from PIL import Image

    resizing, writing = [], []
    for _ in range(runs):
        with time_spent_in(Image.Image, "resize") as spent:
            ours()
        resizing.append(spent[0])
        start = time.perf_counter()
        np.full(output_shape, 0.5, dtype=np.float32)
        writing.append(time.perf_counter() - start)
    return dict(row, floor=min((statistics.median(resizing) + statistics.median(writing)) / row["theirs"], 1.0))


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
