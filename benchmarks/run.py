"""The one benchmark suite: every family's benchmarks in ONE process, vlmhub against transformers on identical
(converted) weights, CPU fp32, interleaved runs. Writes BENCHMARKS.md (a table per family: ratios ours/transformers
with their spread over the paired rounds, the floor the shared work sets where it is measured, the goals of issue 11
marked met or not) and a bar chart of the ratios.

    python benchmarks/run.py [--sizes tiny | tiny,mid] [--threads N] [--families llava,mllama]
                             [--out BENCHMARKS.md] [--chart benchmarks/results/ratios.png]
"""

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import fmt, ratio, ratio_spread  # noqa: E402

# (module in benchmarks/, title in the report); each module exposes rows(sizes) -> list[dict]
FAMILIES = [
    ("vit_clip", "ViT and CLIP"),
    ("llava", "LLaVA-1.5 and LLaVA-NeXT"),
    ("blip", "BLIP"),
    ("blip2", "BLIP-2"),
    ("mllama", "Llama 3.2 Vision (Mllama)"),
    ("mplug_owl", "mPLUG-Owl (against our LLaVA-1.5: transformers has no mPLUG-Owl)"),
]
# Issue 11's goals by row kind (ratio ours / baseline at most this); a row's own "goal" key overrides (preprocessing
# goals hold only for Mllama tiling and LLaVA-NeXT AnyRes, the decode goal only for our 4-tile / 1-tile step).
GOALS = {"vision": 0.8, "prefill": 1.0, "generation": 1.0}
KIND_LABEL = {"vision": "vision tower", "prefill": "prefill", "generation": "greedy generation", "text": "text tower",
              "preprocessing": "preprocessing", "memory": "peak memory", "decode": "decode 4 vs 1 tile"}


def goal_of(row: dict) -> float | None:
    return row["goal"] if "goal" in row else GOALS.get(row.get("kind"))


NEAR_MISS = "missed, within spread"


def verdict(row: dict) -> str:
    """"met" (the median paired ratio is at most the goal), NEAR_MISS (it is above, but a quarter or more of the
    rounds met the goal: the first quartile is at most the goal), "MISSED", or "" where the row has no goal."""
    goal, q = goal_of(row), ratio(row)
    if goal is None or q is None:
        return ""
    if q <= goal:
        return "met"
    spread = ratio_spread(row)
    return NEAR_MISS if spread is not None and spread[0] <= goal else "MISSED"


def spread_text(row: dict) -> str:
    spread = ratio_spread(row)
    return "" if spread is None else f"{spread[0]:.3f}–{spread[1]:.3f}"


def floor_text(row: dict) -> str:
    return f"{row['floor']:.3f}" if row.get("floor") is not None else ""


def family_table(rows: list[dict]) -> str:
    lines = ["| benchmark | kind | size | baseline | baseline value | vlmhub value | unit | ratio ours/baseline | "
             "spread | floor | goal | |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit, q, goal = r.get("unit", "ms"), ratio(r), goal_of(r)
        lines.append(
            f"| {r['name']} | {KIND_LABEL.get(r.get('kind'), r.get('kind', ''))} | {r['size']} | "
            f"{r.get('baseline', 'transformers')} | {fmt(r['theirs'], unit)} | {fmt(r['ours'], unit)} | {unit} | "
            f"{'n/a' if q is None else f'{q:.3f}'} | {spread_text(r)} | {floor_text(r)} | "
            f"{'' if goal is None else f'≤ {goal:g}'} | {verdict(r)} |"
        )
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def run_family(module_name: str, sizes: str) -> tuple[list[dict], float, str | None]:
    """(rows, seconds, error text or None): a family that fails is reported, not fatal to the suite."""
    start = time.perf_counter()
    try:
        found = importlib.import_module(module_name).rows(sizes)
    except Exception:  # noqa: BLE001 - the report names the failure
        return [], time.perf_counter() - start, traceback.format_exc(limit=3)
    return found, time.perf_counter() - start, None


def summary(results: list[tuple[str, list[dict], float, str | None]]) -> str:
    judged = [(title, r) for title, found, _, _ in results for r in found if verdict(r)]
    missed = [(title, r) for title, r in judged if verdict(r) != "met"]
    near = sum(verdict(r) == NEAR_MISS for _, r in missed)
    lines = [f"Goals met: {len(judged) - len(missed)} of {len(judged)} rows with a goal; of the {len(missed)} missed, "
             f"{near} within the spread of their rounds."]
    for title, r in missed:
        details = [f"{ratio(r):.3f} > {goal_of(r):g}"]
        details += [f"spread {spread_text(r)}"] if spread_text(r) else []
        details += [f"floor {floor_text(r)}"] if floor_text(r) else []
        lines.append(f"- {verdict(r)}: {title}: {r['name']} ({r['size']}; {', '.join(details)})")
    return "\n".join(lines)


def report(results, sizes: str, seconds: float) -> str:
    parts = [
        "# Benchmarks: vlmhub against transformers",
        "",
        "Generated by `python benchmarks/run.py` (`make bench`); do not edit by hand.",
        "",
        f"- machine: {machine()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"CPU fp32",
        f"- sizes: {sizes}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {seconds:.0f} s in all",
        "- times: interleaved rounds (ours and the baseline in turn, so drift hits both alike); the values are medians, "
        "the ratio is the median of the per-round ratios ours/baseline, and the spread their first to third quartile "
        "(half the rounds fall inside it)",
        "- floor: the ratio the work both sides must do allows at best, timed in the same run: for vision towers at "
        "the mid sizes, the baseline's time in matrix products, the patch convolution and fused attention (torch "
        "profiler self times) over its whole time; for preprocessing, Pillow's resizes in our call (both make the same "
        "pixels from 8-bit Pillow resizes) plus one write of the output array, over the baseline's time",
        "- peak memory: the most bytes of tensors one warm forward holds at once, counted exactly op by op (outputs "
        "included; kernels' private buffers not); the same on every run",
        f"- goals (issue 11): vision tower ≤ {GOALS['vision']}, prefill and generation ≤ {GOALS['prefill']}, "
        "preprocessing ≤ 0.2 for Mllama tiling and LLaVA-NeXT AnyRes, our cached decode step with 4 tiles ≤ 1.05 × "
        "with 1 tile",
        "",
        summary(results),
    ]
    for title, found, took, error in results:
        parts += ["", f"## {title}", "", f"{took:.0f} s", ""]
        parts.append(f"FAILED:\n\n```\n{error}```" if error else family_table(found))
    return "\n".join(parts) + "\n"


def chart(results, path: Path) -> None:
    """Horizontal bars of ratio ours/baseline per row: green met, red missed, grey no goal; a tick at each goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(title, r) for title, found, _, _ in results for r in found if ratio(r) is not None]
    if not rows:
        return
    labels = [f"{title.split(' (')[0]}: {r['name']} [{r['size']}]" for title, r in rows]
    colors = {"met": "tab:green", NEAR_MISS: "tab:orange", "MISSED": "tab:red", "": "tab:gray"}
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(y, [ratio(r) for _, r in rows], color=[colors[verdict(r)] for _, r in rows])
    for i, (_, r) in enumerate(rows):
        if goal_of(r) is not None:
            ax.plot([goal_of(r)] * 2, [i - 0.4, i + 0.4], color="black", linewidth=1.5)
        if r.get("floor") is not None:
            ax.plot([r["floor"]], [i], marker="x", color="black", markersize=5)
    ax.axvline(1.0, color="black", linestyle=":", linewidth=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ratio vlmhub / baseline (lower is better; black tick = goal, x = floor of the shared work)")
    ax.set_title(f"vlmhub / transformers, torch {torch.__version__}, {torch.get_num_threads()} threads")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny", help='"tiny" or "tiny,mid" (mid: a ViT-B-sized tower etc.)')
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--families", default=",".join(name for name, _ in FAMILIES))
    parser.add_argument("--out", default="BENCHMARKS.md")
    parser.add_argument("--chart", default=str(HERE / "results" / "ratios.png"))
    args = parser.parse_args(argv)
    unknown = set(args.sizes.split(",")) - {"tiny", "mid"}
    if unknown:
        parser.error(f"--sizes takes tiny and/or mid, got {sorted(unknown)}")
    chosen = args.families.split(",")
    missing = set(chosen) - {name for name, _ in FAMILIES}
    if missing:
        parser.error(f"unknown families {sorted(missing)}; known: {[name for name, _ in FAMILIES]}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start, results = time.perf_counter(), []
    for name, title in FAMILIES:
        if name in chosen:
            print(f"[bench] {name} ...", flush=True)
            results.append((title, *run_family(name, args.sizes)))
            print(f"[bench] {name}: {results[-1][2]:.0f} s{' FAILED' if results[-1][3] else ''}", flush=True)
    text = report(results, args.sizes, time.perf_counter() - start)
    Path(args.out).write_text(text)
    chart(results, Path(args.chart))
    print(text)
    print(f"wrote {args.out} and {args.chart}")
    return 1 if any(error for *_, error in results) else 0


if __name__ == "__main__":
    sys.exit(main())
