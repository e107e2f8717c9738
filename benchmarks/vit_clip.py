"""ViT and CLIP forwards, vlmhub vs transformers on identical weights (converted), CPU fp32, one process.

    python benchmarks/vit_clip.py [--sizes tiny,base] [--threads N] [--out benchmarks/results/vit_clip.md]
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, memory_row, pair, preprocessing_row, real_images, resolve_sizes, table, tower_row  # noqa: E402

MID = "base"  # the size `run.py --sizes mid` picks

SIZES = {
    # (hidden, layers, heads, mlp, image, patch) for the towers; text towers use 77 tokens.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32, patch_size=8),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16),
}


def bench_vit(size: str, batch: int, device: str):
    hf, ours = pair(transformers.ViTModel(transformers.ViTConfig(**SIZES[size])))
    hf, ours = hf.to(device), ours.to(device)
    pixels = torch.randn(batch, 3, SIZES[size]["image_size"], SIZES[size]["image_size"], device=device)
    return [tower_row(f"ViT forward (batch {batch})", size, lambda: hf(pixels), lambda: ours(pixels),
                      repeats=10 if size == "tiny" else 5),
            memory_row(f"ViT forward peak memory (batch {batch})", size, {"theirs": lambda: hf(pixels), "ours": lambda: ours(pixels)})]


def bench_clip(size: str, batch: int, device: str):
    s = SIZES[size]
    text = dict(hidden_size=s["hidden_size"] * 2 // 3 if size == "base" else s["hidden_size"],
                num_hidden_layers=s["num_hidden_layers"], num_attention_heads=8 if size == "base" else 4,
                intermediate_size=s["intermediate_size"] * 2 // 3 if size == "base" else s["intermediate_size"])
    config = transformers.CLIPConfig(vision_config=s, text_config=text, projection_dim=512 if size == "base" else 32)
    hf, ours = pair(transformers.CLIPModel(config))
    hf, ours = hf.to(device), ours.to(device)
    pixels = torch.randn(batch, 3, s["image_size"], s["image_size"], device=device)
    ids = torch.randint(0, 49000, (batch, 77), device=device)
    ids[:, -1] = 49407
    mask = torch.ones_like(ids)
    out = []
    repeats = 10 if size == "tiny" else 5
    out.append(tower_row(f"CLIP image features (batch {batch})", size, lambda: hf.get_image_features(pixels),
                         lambda: ours.get_image_features(pixels), repeats=repeats))
    t = compare(lambda: hf.get_text_features(ids, mask), lambda: ours.get_text_features(ids, mask), repeats=repeats)
    out.append(dict(name=f"CLIP text features (batch {batch}, 77 tokens)", size=size, kind="text", **t))
    t = compare(lambda: hf(input_ids=ids, attention_mask=mask, pixel_values=pixels),
                lambda: ours(input_ids=ids, attention_mask=mask, pixel_values=pixels), repeats=repeats)
    out.append(dict(name=f"CLIP full forward (batch {batch})", size=size, kind="prefill", **t))
    return out


def rows(sizes="tiny", batch: int = 4, device: str = "cpu") -> list[dict]:
    """Every ViT and CLIP row for the given sizes ("tiny", "base", or "mid" = base)."""
    out = []
    for size in resolve_sizes(sizes, MID):
        out += bench_vit(size, batch, device)
        out += bench_clip(size, batch, device)
    return out + bench_preprocessing()


def bench_preprocessing() -> list[dict]:
    """The processors at their defaults (224 px). CLIP's centre crop starts where torchvision's does (rounded, as
    OpenAI trained with), transformers' floors it: for some sizes the crop is one pixel apart, so not identical."""
    from vlmhub.processing.clip import VlmhubCLIPImageProcessor
    from vlmhub.processing.vit import VlmhubViTImageProcessor

    images = real_images()
    return [preprocessing_row("ViT preprocessing", transformers.ViTImageProcessorPil(), VlmhubViTImageProcessor(), images),
            preprocessing_row("CLIP preprocessing", transformers.CLIPImageProcessorPil(), VlmhubCLIPImageProcessor(),
                              images)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/vit_clip.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}, " \
             f"{torch.get_num_threads()} threads, fp32, median of interleaved runs\n\n" + \
             table(rows(args.sizes, args.batch, args.device))
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
