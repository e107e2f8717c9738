"""mPLUG-Owl, absolute timings (transformers has no mPLUG-Owl class to compare with), next to our LLaVA-1.5 with the
same vision tower and language model: the abstractor's 65 tokens per image against LLaVA's one token per patch.
CPU fp32, one process: image encoding (ViT + connector), prefill forward, greedy generation.

    python benchmarks/mplug_owl.py [--sizes tiny,small] [--out benchmarks/results/mplug_owl.md]
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, generation_rate, ratio, resolve_sizes, save_report  # noqa: E402

from vlmhub.configuration.llava import VlmhubLlavaConfig  # noqa: E402
from vlmhub.configuration.mplug_owl import VlmhubMplugOwlConfig  # noqa: E402
from vlmhub.modeling.llava import VlmhubLlavaForConditionalGeneration  # noqa: E402
from vlmhub.modeling.mplug_owl import VlmhubMplugOwlForConditionalGeneration  # noqa: E402

SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7),
                 abstractor=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_query_tokens=4),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)),
    # a ViT-B/16 tower at 224 px (197 tokens), the released abstractor's depth and query count, a ~130M-parameter Llama
    "small": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
                  abstractor=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=12, num_query_tokens=64),
                  text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16, vocab_size=32000)),
}
IMAGE = 999  # below the vocab of either size
MID = "small"  # the size `run.py --sizes mid` picks


def models(size: str):
    s = SIZES[size]
    text = dict(s["text"], model_type="llama", pad_token_id=0, eos_token_id=2, bos_token_id=1)
    owl = VlmhubMplugOwlForConditionalGeneration(VlmhubMplugOwlConfig(
        vision_config=s["vision"], abstractor_config=s["abstractor"], text_config=text, image_token_id=IMAGE))
    llava = VlmhubLlavaForConditionalGeneration(VlmhubLlavaConfig(
        vision_config=s["vision"], text_config=text, image_token_id=IMAGE, image_aspect_ratio="square",
        vision_feature_layer=-1))
    return owl.eval(), llava.eval()


def inputs(size: str, image_tokens: int) -> dict:
    crop = SIZES[size]["vision"]["image_size"]
    ids = torch.cat([torch.randint(3, 900, (1, 40)), torch.full((1, image_tokens), IMAGE), torch.randint(3, 900, (1, 12))], dim=1)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, crop, crop))


def bench(size: str, new_tokens: int) -> list[dict]:
    owl, llava = models(size)
    x_owl, x_llava = inputs(size, owl.config.num_image_tokens), inputs(size, llava.config.tokens_per_crop)
    repeats = 10 if size == "tiny" else 4
    pixels = x_owl["pixel_values"]
    # "theirs" is our LLaVA-1.5, "ours" mPLUG-Owl
    rows = [dict(name="image encoding (ViT + connector, 1 image)", size=size, kind="vision", **compare(
        lambda: llava.get_image_features(pixels), lambda: owl.get_image_features(pixels), repeats=repeats))]
    rows.append(dict(name=f"prefill ({x_owl['input_ids'].shape[1]} / {x_llava['input_ids'].shape[1]} tokens)", size=size,
                     kind="prefill", **compare(lambda: llava(**x_llava), lambda: owl(**x_owl), repeats=repeats)))
    rows.append(dict(name=f"greedy generation ({new_tokens} tokens, KV cache)", size=size, kind="generation",
                     **compare(lambda: generation_rate(llava, x_llava, new_tokens),
                               lambda: generation_rate(owl, x_owl, new_tokens), repeats=repeats, warmup=0, min_seconds=0)))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | size | vlmhub mPLUG-Owl (ms) | vlmhub LLaVA-1.5, same ViT + LM (ms) | ratio owl/llava |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['size']} | {r['ours'] * 1e3:.2f} | {r['theirs'] * 1e3:.2f} | {ratio(r):.3f} |")
    return "\n".join(lines)


def collect(sizes="tiny", new_tokens: int = 16) -> list[dict]:
    """Rows with "ours" (mPLUG-Owl) and "theirs" (LLaVA-1.5) seconds for the given sizes ("tiny", "small", or "mid")."""
    torch.manual_seed(0)
    return [row for size in resolve_sizes(sizes, MID) for row in bench(size, new_tokens)]


def rows(sizes="tiny", new_tokens: int = 16) -> list[dict]:
    """The suite's form: ours = mPLUG-Owl, theirs = our LLaVA-1.5 on the same ViT and LM (no transformers class)."""
    return [dict(r, baseline="vlmhub LLaVA-1.5", goal=None) for r in collect(sizes, new_tokens)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/mplug_owl.md")
    args = parser.parse_args()
    start = time.perf_counter()
    found = collect(args.sizes, args.new_tokens)
    report = (f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
              f"cpu fp32, medians of interleaved runs ({time.perf_counter() - start:.0f} s)\n\n" + table(found))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
