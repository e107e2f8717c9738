"""BLIP (v1): the vision tower, the captioning forward, greedy captioning and the image-text matching forward, vlmhub
against transformers on identical weights (converted from random transformers BlipForConditionalGeneration and
BlipForImageTextRetrieval models), fp32, one process.

    python benchmarks/blip.py [--sizes tiny,base] [--threads N] [--out benchmarks/results/blip.md]
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (compare, memory_row, pair, preprocessing_row, real_images, resolve_sizes,  # noqa: E402
                    save_report, table, tower_row)

import vlmhub  # noqa: E402,F401

MID = "base"  # the size `run.py --sizes mid` picks
BOS, SEP, PAD = 101, 102, 0
SIZES = {
    "tiny": dict(vision=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8),
                 text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           vocab_size=1000)),
    # BLIP-base's widths at 224 px: a ViT-B/16 (197 image tokens) and a 12-layer BERT-base decoder whose every layer
    # cross-attends to the image
    "base": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             image_size=224, patch_size=16),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           vocab_size=30524)),
}


def hf_config(size: str) -> transformers.BlipConfig:
    text = dict(SIZES[size]["text"], max_position_embeddings=128, bos_token_id=BOS, sep_token_id=SEP, eos_token_id=SEP,
                pad_token_id=PAD)
    return transformers.BlipConfig(vision_config=SIZES[size]["vision"], text_config=text, image_text_hidden_size=256)


def text_inputs(size: str, batch: int, length: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """A caption per image: [DEC] (BOS), words, [SEP]."""
    vocab = SIZES[size]["text"]["vocab_size"]
    ids = torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, length))
    ids[:, 0], ids[:, -1] = BOS, SEP
    return ids, torch.ones_like(ids)


def bench(size: str, batch: int, new_tokens: int) -> list[dict]:
    torch.manual_seed(0)
    hf, ours = pair(transformers.BlipForConditionalGeneration(hf_config(size)))
    image = SIZES[size]["vision"]["image_size"]
    pixels = torch.randn(batch, 3, image, image)
    ids, mask = text_inputs(size, batch)
    repeats = 10 if size == "tiny" else 4
    out = [tower_row(f"BLIP vision tower (batch {batch})", size, lambda: hf.vision_model(pixels),
                     lambda: ours.vision_model(pixels), repeats=repeats)]
    step = dict(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    out.append(dict(name=f"BLIP captioning forward (batch {batch}, {ids.shape[1]} tokens)", size=size, kind="prefill",
                    **compare(lambda: hf(**step), lambda: ours(**step), repeats=repeats)))
    out.append(memory_row(f"BLIP captioning forward peak memory (batch {batch})", size,
                          {"theirs": lambda: hf(**step), "ours": lambda: ours(**step)}))
    gen = dict(pixel_values=pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        same = torch.equal(hf.generate(**gen), ours.generate(**gen))
    out.append(dict(name=f"BLIP greedy caption, {new_tokens} tokens (batch {batch}; identical: {same})", size=size,
                    kind="generation", **compare(lambda: hf.generate(**gen), lambda: ours.generate(**gen),
                                                 repeats=repeats, warmup=1)))
    hf, ours = pair(transformers.BlipForImageTextRetrieval(hf_config(size)))
    match = dict(input_ids=ids, pixel_values=pixels, attention_mask=mask)
    out.append(dict(name=f"BLIP image-text matching forward (batch {batch})", size=size, kind="prefill",
                    **compare(lambda: hf(**match), lambda: ours(**match), repeats=repeats)))
    return out


def rows(sizes="tiny", batch: int = 2, new_tokens: int = 16) -> list[dict]:
    """BLIP rows for the given sizes ("tiny", "base", or "mid" = base)."""
    from vlmhub.processing.blip import VlmhubBlipImageProcessor

    found = [row for size in resolve_sizes(sizes, MID) for row in bench(size, batch, new_tokens)]
    return found + [preprocessing_row("BLIP preprocessing, 384 px", transformers.BlipImageProcessorPil(),
                                      VlmhubBlipImageProcessor(), real_images())]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/blip.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = (f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
              f"cpu fp32, interleaved runs\n\n" + table(rows(args.sizes, args.batch, args.new_tokens)))
    save_report(args.out, report)


if __name__ == "__main__":
    main()
