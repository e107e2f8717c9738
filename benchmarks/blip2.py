"""BLIP-2 (OPT soft prompt): forward and greedy generation, vlmhub vs transformers on identical weights (converted
from a random transformers Blip2ForConditionalGeneration), fp32, one process.

    python benchmarks/blip2.py [--sizes tiny,small] [--threads N] [--device cpu] [--out benchmarks/results/blip2.md]
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, memory_row, preprocessing_row, real_images, resolve_sizes, table, tower_row  # noqa: E402

import vlmhub  # noqa: E402,F401
from vlmhub.conversion.sources import transformers as transformers_source  # noqa: E402

MID = "small"  # the size `run.py --sizes mid` picks
SIZES = {
    # vision (hidden, layers, heads, image, patch), Q-Former (hidden, layers, heads, queries), OPT (hidden, layers, heads)
    "tiny": dict(vision=(64, 2, 4, 32, 8), qformer=(64, 2, 4, 8), text=(64, 2, 4)),
    "small": dict(vision=(384, 6, 6, 224, 14), qformer=(384, 4, 6, 32), text=(512, 6, 8)),
}


def hf_model(size: str) -> transformers.Blip2ForConditionalGeneration:
    (vh, vl, vn, image, patch), (qh, ql, qn, queries), (th, tl, tn) = SIZES[size].values()
    config = transformers.Blip2Config(
        vision_config=dict(hidden_size=vh, intermediate_size=4 * vh, num_hidden_layers=vl, num_attention_heads=vn,
                           image_size=image, patch_size=patch),
        qformer_config=dict(hidden_size=qh, intermediate_size=4 * qh, num_hidden_layers=ql, num_attention_heads=qn),
        text_config=dict(model_type="opt", hidden_size=th, ffn_dim=4 * th, num_hidden_layers=tl, num_attention_heads=tn,
                         vocab_size=1000, word_embed_proj_dim=th, max_position_embeddings=256),
        num_query_tokens=queries, image_token_index=999)
    return transformers.Blip2ForConditionalGeneration(config).eval()


def pair(size: str):
    hf = hf_model(size)
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours, _ = transformers_source.convert(folder)
    return hf, ours.eval()


def bench(size: str, batch: int, new_tokens: int, device: str) -> list[dict]:
    hf, ours = pair(size)
    hf, ours = hf.to(device), ours.to(device)
    image = SIZES[size]["vision"][3]
    queries = SIZES[size]["qformer"][3]
    pixels = torch.randn(batch, 3, image, image, device=device)
    ids = torch.cat([torch.full((batch, queries), 999), torch.randint(3, 900, (batch, 16))], 1).to(device)
    repeats = 10 if size == "tiny" else 4
    out = [tower_row(f"BLIP-2 vision tower (batch {batch})", size, lambda: hf.vision_model(pixels),
                     lambda: ours.vision.vision_model(pixels), repeats=repeats)]
    t = compare(lambda: hf(pixel_values=pixels, input_ids=ids), lambda: ours(pixel_values=pixels, input_ids=ids),
                repeats=repeats)
    out.append(dict(name=f"BLIP-2 forward (batch {batch}, {ids.shape[1]} tokens)", size=size, kind="prefill", **t))
    out.append(memory_row(f"BLIP-2 forward peak memory (batch {batch})", size,
                          {"theirs": lambda: hf(pixel_values=pixels, input_ids=ids),
                           "ours": lambda: ours(pixel_values=pixels, input_ids=ids)}))
    gen = dict(pixel_values=pixels, input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        same = torch.equal(hf.generate(**gen)[:, -new_tokens:], ours.generate(**gen)[:, -new_tokens:])
    t = compare(lambda: hf.generate(**gen), lambda: ours.generate(**gen), repeats=repeats, warmup=1)
    out.append(dict(name=f"BLIP-2 greedy {new_tokens} tokens (batch {batch}; identical: {same})", size=size,
                    kind="generation", **t))
    return out


def rows(sizes="tiny", batch: int = 2, new_tokens: int = 16, device: str = "cpu") -> list[dict]:
    """BLIP-2 rows for the given sizes ("tiny", "small", or "mid" = small)."""
    from vlmhub.processing.blip2 import VlmhubBlip2ImageProcessor

    torch.manual_seed(0)
    found = [row for size in resolve_sizes(sizes, MID) for row in bench(size, batch, new_tokens, device)]
    theirs = transformers.BlipImageProcessorPil(size={"height": 224, "width": 224})  # BLIP-2's setting
    return found + [preprocessing_row("BLIP-2 preprocessing, 224 px", theirs, VlmhubBlip2ImageProcessor(), real_images())]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/blip2.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}, " \
             f"{torch.get_num_threads()} threads, fp32, median of interleaved runs\n\n" + \
             table(rows(args.sizes, args.batch, args.new_tokens, args.device))
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
