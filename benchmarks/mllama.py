"""Llama 3.2 Vision (Mllama), vlmhub vs transformers on identical (converted) weights, CPU fp32, one process:
image preprocessing at the release's settings (560 px tiles), prefill forward, greedy generation, and the time of a
cached decode step with 4 tiles against 1 tile (the image keys/values are cached at prefill, so it should not grow).

    python benchmarks/mllama.py [--sizes tiny,small] [--threads N] [--out benchmarks/results/mllama.md]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (compare, generation_rate, memory_row, pair, preprocessing_floor, ratio, resolve_sizes,  # noqa: E402
                    table, tower_row)

import vlmhub  # noqa: E402,F401
from vlmhub.processing.mllama import VlmhubMllamaImageProcessor  # noqa: E402

CLIP = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
IMAGE_SIZES_WH = [(800, 600), (300, 200), (2000, 500), (500, 2000), (560, 560), (1, 1)]
SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                             attention_heads=4, image_size=28, patch_size=14, intermediate_layers_indices=[0, 2]),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1000, cross_attention_layers=[1, 4])),
    # 224 px tiles (257 tokens each, 4 tiles = 1028 image tokens), a ~50M-parameter Llama with 2 cross-attention layers
    "small": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_global_layers=2,
                              attention_heads=4, image_size=224, patch_size=14, intermediate_layers_indices=[3, 7]),
                  text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=10, num_attention_heads=8,
                            num_key_value_heads=4, vocab_size=32000, cross_attention_layers=[3, 8])),
}
MID = "small"  # the size `run.py --sizes mid` picks
GRIDS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]


def models(size: str):
    s = SIZES[size]
    layers = len(s["vision"]["intermediate_layers_indices"])
    vision = dict(s["vision"], vision_output_dim=s["vision"]["hidden_size"] * (1 + layers))
    vocab = s["text"]["vocab_size"]
    text = dict(s["text"], bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=512)
    config = transformers.MllamaConfig(vision_config=vision, text_config=text, image_token_index=vocab)
    torch.manual_seed(0)
    return pair(transformers.MllamaForConditionalGeneration(config))


def inputs(size: str, grids, length: int = 32) -> dict:
    """A prompt with one <|image|> per image right after BOS, every token after it seeing the image."""
    vocab, tile = SIZES[size]["text"]["vocab_size"], SIZES[size]["vision"]["image_size"]
    torch.manual_seed(1)
    ids = torch.randint(3, vocab, (1, length))
    ids[0, 0], ids[0, 1 : 1 + len(grids)] = 1, vocab
    mask = torch.zeros(1, len(grids), 4, dtype=torch.long)
    cam = torch.zeros(1, length, len(grids), 4, dtype=torch.long)
    for i, (r, c) in enumerate(grids):
        mask[0, i, : r * c] = 1
        cam[0, 1 + i :, i, : r * c] = 1
    return dict(input_ids=ids, pixel_values=torch.randn(1, len(grids), 4, 3, tile, tile),
                aspect_ratio_ids=torch.tensor([[GRIDS.index(list(g)) + 1 for g in grids]]), aspect_ratio_mask=mask,
                cross_attention_mask=cam, attention_mask=torch.ones_like(ids))


def bench_preprocessing() -> list[dict]:
    theirs = transformers.MllamaImageProcessorPil(size={"height": 560, "width": 560}, max_image_tiles=4, **CLIP)
    ours = VlmhubMllamaImageProcessor()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES_WH]
    rows = []
    for image, (w, h) in zip(images, IMAGE_SIZES_WH):
        t = compare(lambda: theirs(image, return_tensors="pt"), lambda: ours(image, return_tensors="pt"), repeats=20)
        row = dict(name=f"preprocess one {w}x{h} image", size="560 px, 4 tiles", kind="preprocessing", goal=0.2, **t)
        rows.append(preprocessing_floor(row, lambda: ours(image, return_tensors="pt"), (1, 1, 4, 3, 560, 560)))
    batch = [[im] for im in images]
    t = compare(lambda: theirs(batch, return_tensors="pt"), lambda: ours(batch, return_tensors="pt"), repeats=10)
    row = dict(name=f"preprocess a batch of the {len(images)} images", size="560 px, 4 tiles", kind="preprocessing",
               goal=0.2, **t)
    rows.append(preprocessing_floor(row, lambda: ours(batch, return_tensors="pt"), (len(batch), 1, 4, 3, 560, 560)))
    return rows


def bench_model(size: str, new_tokens: int) -> tuple[list[dict], list[dict]]:
    hf, ours = models(size)
    x = inputs(size, [(2, 2)])
    tiles = {key: x[key] for key in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
    rows = [tower_row("vision tower, 1 image, 4 tiles", size, lambda: hf.model.vision_model(**tiles),
                      lambda: ours.vision_model(*tiles.values()), repeats=5)]
    decode = []
    for label, grids in (("1 image, 4 tiles", [(2, 2)]), ("2 images, 4 + 2 tiles", [(2, 2), (1, 2)])):
        x = inputs(size, grids)
        t = compare(lambda: hf(**x), lambda: ours(**x), repeats=5)
        rows.append(dict(name=f"prefill forward, 32 tokens, {label}", size=size, kind="prefill", **t))
    x = inputs(size, [(2, 2)])
    rows.append(memory_row("prefill peak memory, 4 tiles", size, {"theirs": lambda: hf(**x), "ours": lambda: ours(**x)}))
    t = compare(lambda: generation_rate(hf, x, new_tokens), lambda: generation_rate(ours, x, new_tokens), repeats=5,
                warmup=1)
    rows.append(dict(name=f"greedy generation, {new_tokens} new tokens, 4 tiles", size=size, kind="generation", **t))
    for name, model in (("transformers", hf), ("vlmhub", ours)):
        t = compare(decode_step(model, inputs(size, [(1, 1)])), decode_step(model, inputs(size, [(2, 2)])), repeats=30,
                    warmup=3)  # "theirs": 1 tile, "ours": 4 tiles
        decode.append(dict(model=name, size=size, **t))
    return rows, decode


def decode_step(model, x: dict):
    """One cached decode step after a prefill (no pixels: the image keys/values come from the cache). Each call
    appends a token to the cache, so interleaved runs grow both caches alike."""
    with torch.inference_mode():
        cache = model(**x, use_cache=True).cache
    step = dict(input_ids=x["input_ids"][:, -1:], cross_attention_mask=x["cross_attention_mask"][:, -1:],
                cache=cache, use_cache=True)
    return lambda: model(**step)


def decode_table(rows: list[dict]) -> str:
    lines = ["| model | size | decode ms/token, 1 tile | decode ms/token, 4 tiles | ratio 4 tiles / 1 tile |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['size']} | {r['theirs'] * 1e3:.2f} | {r['ours'] * 1e3:.2f} | {ratio(r):.3f} |")
    return "\n".join(lines)


def collect(sizes="tiny", new_tokens: int = 16, preprocessing: bool = True) -> tuple[list[dict], list[dict]]:
    """(comparison rows, decode-step rows) for the given sizes ("tiny", "small", or "mid" = small)."""
    rows, decode = bench_preprocessing() if preprocessing else [], []
    for size in resolve_sizes(sizes, MID):
        more, steps = bench_model(size, new_tokens)
        rows, decode = rows + more, decode + steps
    return rows, decode


def rows(sizes="tiny", new_tokens: int = 16, preprocessing: bool = True) -> list[dict]:
    """Every Mllama row; each model's cached decode step is a row of its own: 4 tiles (ours) against 1 tile (theirs)."""
    found, decode = collect(sizes, new_tokens, preprocessing)
    return found + [dict(r, name=f"{r['model']} decode step, 4 tiles vs 1 tile", kind="decode", baseline="1 tile",
                         goal=1.05 if r["model"] == "vlmhub" else None) for r in decode]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/mllama.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    found, decode = collect(args.sizes, args.new_tokens)
    report = (f"torch {torch.__version__}, transformers {transformers.__version__}, cpu, {torch.get_num_threads()} "
              f"threads, fp32, median of interleaved runs\n\n{table(found)}\n\n{decode_table(decode)}")
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
