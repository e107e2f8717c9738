"""Visual-token compression on a small LLaVA: none vs 2x2 spatial pooling vs ToMe token merging, CPU fp32, one
process, the same weights in every variant (both compressions are parameter-free, switched by config).

Sizes: "default" is the shipped default LLaVA (vlmhub.load_default: ViT 96 wide, 48 px / patch 8 = 36 patches,
3-layer 128-wide Llama, trained on the synthetic scenes); "144" is the same architecture at patch 4 (144 patches),
random weights (latency only). For the trained model the held-out exact-match accuracy of each variant is measured
training-free (compression applied to a model trained without it) on a fresh scenes split.

    python benchmarks/compression.py [--sizes default,144] [--batches 1,8] [--threads 1] [--eval 200]
                                     [--out benchmarks/results/compression.md]
"""

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, save_report  # noqa: E402

import vlmhub  # noqa: E402

# name -> (spatial_pool_stride, fraction of the patch tokens ToMe removes)
VARIANTS = {"none": (1, 0.0), "pool 2x2": (2, 0.0), "ToMe 50%": (1, 0.5), "ToMe 75%": (1, 0.75)}
QUESTION = "How many shapes are there?"


def base_model(size: str):
    """(model, processor) in eval mode: the shipped default, or its architecture at patch 4 with random weights."""
    model, processor = vlmhub.load_default("llava")
    if size == "default":
        return model, processor
    config = copy.deepcopy(model.config)
    config.vision_config.patch_size = 4
    torch.manual_seed(0)
    processor = copy.deepcopy(processor)
    processor.patch_size = 4
    return vlmhub.LlavaForConditionalGeneration(config).eval(), processor


def variant(model, processor, stride: int, fraction: float):
    """The same weights under another compression setting, and a processor that counts its tokens."""
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size // stride) ** 2
    merge = round(patches * fraction)
    config = copy.deepcopy(model.config.to_dict())
    config.update(spatial_pool_stride=stride, visual_token_merge=merge)
    compressed = vlmhub.LlavaForConditionalGeneration(vlmhub.LlavaConfig(**config)).eval()
    compressed.load_state_dict(model.state_dict())
    processor = copy.deepcopy(processor)
    processor.spatial_pool_stride, processor.visual_token_merge = stride, merge
    return compressed, processor


def prompt(processor, image: Image.Image, batch: int) -> dict:
    """The chat prompt of one question about `image`, `batch` times (the processor expands <image>)."""
    from vlmhub.train.recipes import prompt as chat_prompt

    text = chat_prompt(processor, QUESTION)
    return dict(processor(images=[image] * batch, text=[text] * batch, return_tensors="pt"))


# what a family's get_image_features takes from its processor's output (Mllama: the tiles' aspect ratio as well)
IMAGE_INPUTS = ("pixel_values", "image_sizes", "aspect_ratio_ids", "aspect_ratio_mask")


def timings(models: dict, inputs: dict, repeats: int, new_tokens: int) -> dict:
    """Per variant: median prefill and vision+connector seconds (interleaved), and decode tokens/s (all rows)."""
    prefill = interleaved({k: (lambda k=k: models[k](**inputs[k])) for k in models}, repeats=repeats)
    image = {k: {n: v for n, v in inputs[k].items() if n in IMAGE_INPUTS} for k in models}
    vision = interleaved({k: (lambda k=k: models[k].get_image_features(**image[k])) for k in models}, repeats=repeats)
    # decode rate: (time for 1 + n tokens) - (time for 1 token), n tokens; every variant's runs interleaved
    gen = {(k, n): (lambda k=k, n=n: models[k].generate(**inputs[k], max_new_tokens=n, min_new_tokens=n, do_sample=False))
           for k in models for n in (1, 1 + new_tokens)}
    t = interleaved(gen, repeats=max(3, repeats // 5), warmup=1)
    decode = {k: new_tokens * len(inputs[k]["input_ids"]) / max(t[k, 1 + new_tokens] - t[k, 1], 1e-9) for k in models}
    return {k: dict(prefill=prefill[k], vision=vision[k], decode_tps=decode[k]) for k in models}


def accuracy(models: dict, processors: dict, questions: int) -> dict:
    """Training-free held-out exact match (fresh scenes split, seed 4242) of each variant on the first N questions."""
    from vlmhub.data import scenes
    from vlmhub.train.recipes import IMAGE_SIZE, evaluate

    with tempfile.TemporaryDirectory() as folder:
        scenes.generate(folder, train=0, test=max(10, questions // 3), size=IMAGE_SIZE, seed=4242)
        return {k: evaluate(models[k], processors[k], Path(folder), limit=questions)["accuracy"] for k in models}


def measure(size: str, batch: int, repeats: int, new_tokens: int, questions: int) -> list[dict]:
    base, processor = base_model(size)
    crop = base.config.vision_config.image_size
    image = Image.new("RGB", (crop, crop), (200, 40, 40))
    models, processors = {}, {}
    for name, (stride, fraction) in VARIANTS.items():
        models[name], processors[name] = variant(base, processor, stride, fraction)
    inputs = {k: prompt(processors[k], image, batch) for k in models}
    times = timings(models, inputs, repeats, new_tokens)
    acc = accuracy(models, processors, questions) if size == "default" and questions else {}
    params = sum(p.numel() for p in base.parameters())
    return [dict(size=size, batch=batch, variant=k, tokens=m.config.tokens_per_image(), params=params,
                 prompt=inputs[k]["input_ids"].shape[1], accuracy=acc.get(k), **times[k]) for k, m in models.items()]


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | variant | visual tokens | prompt tokens | parameters | prefill ms | prefill vs none | "
             "vision+connector ms | decode tokens/s | held-out exact match |", "|---" * 11 + "|"]
    none = {(r["size"], r["batch"]): r["prefill"] for r in rows if r["variant"] == "none"}
    for r in rows:
        acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        vs_none = r["prefill"] / none[r["size"], r["batch"]]
        lines.append(f"| {r['size']} | {r['batch']} | {r['variant']} | {r['tokens']} | {r['prompt']} | "
                     f"{r['params'] / 1e6:.2f}M | {r['prefill'] * 1e3:.2f} | {vs_none:.3f} | {r['vision'] * 1e3:.2f} | "
                     f"{r['decode_tps']:.0f} | {acc} |")
    return "\n".join(lines)


def rows(sizes="default", batch: int = 8, repeats: int = 30, new_tokens: int = 16, questions: int = 0) -> list[dict]:
    """run.py-style rows: each compressed variant's prefill against no compression (baseline), no goal."""
    out = []
    for size in sizes.split(",") if isinstance(sizes, str) else sizes:
        measured = measure(size, batch, repeats, new_tokens, questions)
        none = next(r for r in measured if r["variant"] == "none")
        out += [dict(name=f"LLaVA prefill, batch {batch}, {r['variant']} ({r['tokens']} visual tokens)", size=size,
                     kind="prefill", baseline=f"none ({none['tokens']} tokens)", theirs=none["prefill"], ours=r["prefill"],
                     goal=None) for r in measured if r is not none]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="default,144")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--eval", type=int, default=200, help="held-out questions for the accuracy column (0: skip)")
    parser.add_argument("--out", default="benchmarks/results/compression.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    measured = [r for size in args.sizes.split(",") for i, b in enumerate(batches)
                for r in measure(size, b, args.repeats, args.new_tokens, args.eval if i == 0 else 0)]
    report = (f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, fp32, medians of "
              f"{args.repeats} interleaved runs; accuracy on the first {args.eval} held-out questions (training-free "
              f"compression of the shipped model)\n\n" + markdown(measured))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
