"""LLaVA-1.5 and LLaVA-NeXT, vlmhub vs transformers on identical (converted) weights, CPU fp32, one process:
prefill forward, greedy generation, and AnyRes preprocessing.

    python benchmarks/llava.py [--sizes tiny,small] [--out benchmarks/results/llava.md]
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (compare, generation_rate, memory_row, pair, preprocessing_floor, preprocessing_row,  # noqa: E402
                    real_images, resolve_sizes, table, tower_row)

import vlmhub  # noqa: E402,F401
from vlmhub.geometry.anyres import anyres_num_tokens  # noqa: E402

SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=7),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)),
    # a ViT-B/16 tower at 224 px (196 tokens per crop) and a ~130M-parameter Llama
    "small": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
                  text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16, vocab_size=32000)),
}
IMAGE = 999  # below the vocab of either size
MID = "small"  # the size `run.py --sizes mid` picks


def models(size: str, next_: bool):
    s = SIZES[size]
    vision = dict(s["vision"], model_type="clip_vision_model")
    text = dict(s["text"], model_type="llama", pad_token_id=0, eos_token_id=2, bos_token_id=1)
    crop = s["vision"]["image_size"]
    if next_:
        pinpoints = [[crop, 2 * crop], [2 * crop, crop], [2 * crop, 2 * crop]]
        config = transformers.LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=IMAGE, image_grid_pinpoints=pinpoints)
        return pair(transformers.LlavaNextForConditionalGeneration(config)), pinpoints
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE)
    return pair(transformers.LlavaForConditionalGeneration(config)), None


def inputs(size: str, pinpoints) -> dict:
    crop, patch = SIZES[size]["vision"]["image_size"], SIZES[size]["vision"]["patch_size"]
    side = crop // patch
    if pinpoints:
        sizes = torch.tensor([[crop * 3 // 2, crop * 2]])
        n = anyres_num_tokens(tuple(sizes[0].tolist()), pinpoints, crop, side)
        extra = dict(pixel_values=torch.randn(1, 5, 3, crop, crop), image_sizes=sizes)
    else:
        n, extra = side * side, dict(pixel_values=torch.randn(1, 3, crop, crop))
    ids = torch.cat([torch.randint(3, 900, (1, 20)), torch.full((1, n), IMAGE), torch.randint(3, 900, (1, 12))], dim=1)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)


def bench(size: str, next_: bool, new_tokens: int) -> list[dict]:
    (hf, ours), pinpoints = models(size, next_)
    x = inputs(size, pinpoints)
    name = "LLaVA-NeXT" if next_ else "LLaVA-1.5"
    repeats = 10 if size == "tiny" else 4
    crops = x["pixel_values"].flatten(0, -4)  # (crops, 3, H, W)
    out = [tower_row(f"{name} vision tower ({crops.shape[0]} crops)", size, lambda: hf.model.vision_tower(crops),
                     lambda: ours.vision_tower(crops), repeats=repeats)]
    out.append(dict(name=f"{name} prefill ({x['input_ids'].shape[1]} tokens)", size=size, kind="prefill",
                     **compare(lambda: hf(**x), lambda: ours(**x), repeats=repeats)))
    out.append(memory_row(f"{name} prefill peak memory", size, {"theirs": lambda: hf(**x), "ours": lambda: ours(**x)}))
    t = compare(lambda: generation_rate(hf, x, new_tokens), lambda: generation_rate(ours, x, new_tokens),
                repeats=repeats, warmup=0, min_seconds=0)
    out.append(dict(name=f"{name} greedy generation ({new_tokens} tokens)", size=size, kind="generation", **t))
    return out


def bench_preprocessing(count: int = 16) -> dict:
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    crop = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})  # the same work on both sides
    theirs = LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, **crop)
    ours = vlmhub.LlavaImageProcessor(image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints, **crop)
    images = real_images(count)
    if not torch.equal(theirs(images, return_tensors="pt")["pixel_values"], ours(images, return_tensors="pt")["pixel_values"]):
        raise AssertionError("AnyRes pixel_values differ from transformers': the timing would compare different work")
    t = compare(lambda: theirs(images, return_tensors="pt"), lambda: ours(images, return_tensors="pt"), repeats=5, warmup=1)
    row = dict(name=f"AnyRes preprocessing ({count} images, 336 px crops)", size="real", kind="preprocessing", goal=0.2, **t)
    shape = tuple(ours(images, return_tensors="pt")["pixel_values"].shape)
    return preprocessing_floor(row, lambda: ours(images, return_tensors="pt"), shape)


def rows(sizes="tiny", new_tokens: int = 16, preprocessing: bool = True) -> list[dict]:
    """LLaVA-1.5 and LLaVA-NeXT rows for the given sizes ("tiny", "small", or "mid" = small), then AnyRes."""
    torch.manual_seed(0)
    out = [row for size in resolve_sizes(sizes, MID) for next_ in (False, True) for row in bench(size, next_, new_tokens)]
    return out + ([bench_pad_preprocessing(), bench_preprocessing()] if preprocessing else [])


def bench_pad_preprocessing() -> dict:
    """LLaVA-1.5's: each image padded to a square on the mean colour, then resized and cropped to 336 px."""
    crop = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return preprocessing_row("LLaVA-1.5 preprocessing, pad to square, 336 px",
                             transformers.LlavaImageProcessorPil(do_pad=True, **crop),
                             vlmhub.LlavaImageProcessor(image_aspect_ratio="pad", **crop), real_images())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/llava.md")
    args = parser.parse_args()
    report = f"torch {torch.__version__}, transformers {transformers.__version__}, cpu, {torch.get_num_threads()} threads, " \
             f"fp32, medians of interleaved runs\n\n" + table(rows(args.sizes, args.new_tokens))
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
