"""GPU benchmark for a lent CUDA machine: bf16 random-weight models of the released shapes, built from configs (no
download): LLaVA-1.5-7B (CLIP ViT-L/14-336 + Llama-7B) and Llama-3.2-11B-Vision (Mllama). For each model, vlmhub
and (unless --skip-transformers) transformers' class of the same shape:

- prefill tokens/s: one forward over the prompt with its image tokens, batch 1;
- decode tokens/s and ms/token: (greedy generation of N new tokens - generation of 1 token) / (N - 1), with the
  default dynamic cache and with the static cache (`cache_implementation="static"`), for which transformers compiles
  the decode step on a GPU (torch.compile, CUDA graphs; the compilation falls in the untimed warm-up call);
- the memory-bandwidth bound of a decode step: bytes read per token (the language model's weights, less the input
  embedding of which one row is read, plus the KV cache) / the device bandwidth measured by a large device-to-device
  copy; "% of bound" = bound / measured ms per token (issue 11's goal: >= 60%).

    python benchmarks/gpu.py [--models llava-7b,mllama-11b] [--caches dynamic,static] [--prompt-tokens 64]
                             [--new-tokens 64] [--repeats 3] [--skip-transformers] [--out benchmarks/results/gpu.md]
    python benchmarks/gpu.py --device cpu --tiny      # tiny shapes: checks the script without a GPU

Without CUDA (and without --device cpu) it prints why and exits with status 0 (nothing to measure).
"""

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

DTYPE = torch.bfloat16
LLAVA_IMAGE = 32000
MLLAMA_IMAGE = 128256
# The released shapes, and tiny ones (--tiny) that only check the script end to end, e.g. on a CPU.
LLAMA_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, hidden_act="quick_gelu")
TINY_LLAMA = dict(LLAMA_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4)
TINY_CLIP = dict(CLIP_L_336, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=28)
# Mllama: our config counts self-attention layers only; transformers' counts the cross-attention layers too.
TINY_MLLAMA_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_global_layers=2,
                          attention_heads=4, image_size=28, patch_size=14, intermediate_layers_indices=[0, 2],
                          vision_output_dim=96)
TINY_MLLAMA_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=128256,
                        bos_token_id=128000, eos_token_id=128001, pad_token_id=128004)
TINY_CROSS = [1, 4]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="llava-7b,mllama-11b", help="comma-separated: llava-7b, mllama-11b")
    parser.add_argument("--caches", default="dynamic,static", help="comma-separated: dynamic, static")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens besides the image tokens")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated for the decode rate")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--skip-transformers", action="store_true", help="time vlmhub's models only")
    parser.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only with --tiny, to check the script")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes instead of the released ones (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results/gpu.md")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {sorted(BUILDERS)}")
    if set(args.caches.split(",")) - set(CACHES):
        parser.error(f"unknown caches {args.caches!r}; known: {', '.join(CACHES)}")
    if args.new_tokens < 2:
        parser.error(f"--new-tokens must be at least 2 (the decode rate is a difference), got {args.new_tokens}")
    if args.device != "cuda" and not args.tiny:
        parser.error(f"--device {args.device} needs --tiny: the 7B and 11B shapes are for the GPU")
    return args


# ----------------------------------------------------------------------------------------------- models and inputs

def llava_7b(impl: str, tiny: bool):
    """(model, inputs(prompt_tokens, device) -> dict) for LLaVA-1.5-7B's shape."""
    vision, text = (TINY_CLIP, TINY_LLAMA) if tiny else (CLIP_L_336, LLAMA_7B)
    if impl == "vlmhub":
        from vlmhub.configuration.llava import VlmhubLlavaConfig
        from vlmhub.modeling.llava import VlmhubLlavaForConditionalGeneration

        config = VlmhubLlavaConfig(vision_config=vision, text_config=text, image_token_id=LLAVA_IMAGE)
        model = VlmhubLlavaForConditionalGeneration(config)
    else:
        import transformers

        config = transformers.LlavaConfig(vision_config=dict(vision, model_type="clip_vision_model"),
                                          text_config=text, image_token_index=LLAVA_IMAGE)
        model = transformers.LlavaForConditionalGeneration(config)
    side = vision["image_size"]

    def inputs(prompt_tokens: int, device: str) -> dict:
        image_tokens = (side // vision["patch_size"]) ** 2
        ids = torch.cat([torch.randint(3, 32000, (1, prompt_tokens // 2)), torch.full((1, image_tokens), LLAVA_IMAGE),
                         torch.randint(3, 32000, (1, prompt_tokens - prompt_tokens // 2))], dim=1)
        x = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, side, side))
        return {k: v.to(device) for k, v in x.items()}

    return model, inputs


def mllama_11b(impl: str, tiny: bool):
    """(model, inputs(prompt_tokens, device) -> dict) for Llama-3.2-11B-Vision's shape (one image, 4 tiles)."""
    if impl == "vlmhub":
        from vlmhub.configuration.mllama import VlmhubMllamaConfig
        from vlmhub.modeling.mllama import VlmhubMllamaForConditionalGeneration

        config = VlmhubMllamaConfig(  # the defaults are the 11B release's
            **(dict(vision_config=TINY_MLLAMA_VISION, text_config=dict(TINY_MLLAMA_TEXT, num_hidden_layers=4),
                    cross_attention_layers=TINY_CROSS) if tiny else {}))
        model = VlmhubMllamaForConditionalGeneration(config)
    else:
        import transformers

        config = transformers.MllamaConfig(**(dict(
            vision_config=TINY_MLLAMA_VISION,
            text_config=dict(TINY_MLLAMA_TEXT, num_hidden_layers=6, cross_attention_layers=TINY_CROSS)) if tiny else {}))
        model = transformers.MllamaForConditionalGeneration(config)
    tile = model.config.vision_config.image_size

    def inputs(prompt_tokens: int, device: str) -> dict:
        length = prompt_tokens + 2
        ids = torch.randint(3, 128000, (1, length))
        ids[0, 0], ids[0, 1] = 128000, MLLAMA_IMAGE  # BOS, <|image|>
        cross = torch.zeros(1, length, 1, 4, dtype=torch.long)
        cross[0, 1:] = 1  # every token after the image sees its 4 tiles
        x = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 1, 4, 3, tile, tile),
                 aspect_ratio_ids=torch.tensor([[6]]),  # the 2x2 grid in the 4-tile table
                 aspect_ratio_mask=torch.ones(1, 1, 4, dtype=torch.long), cross_attention_mask=cross)
        return {k: v.to(device) for k, v in x.items()}

    return model, inputs


BUILDERS = {"llava-7b": llava_7b, "mllama-11b": mllama_11b}
CACHES = {"dynamic": None, "static": "static"}  # -> cache_implementation


def build(name: str, impl: str, device: str, tiny: bool):
    """Random weights initialised directly on the device in bf16 (no CPU copy of a 7-11B model)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model, inputs = BUILDERS[name](impl, tiny)
    finally:
        torch.set_default_dtype(previous)
    return model.eval(), inputs


# ------------------------------------------------------------------------------------------------------ measuring

def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def device_bandwidth(device: str, gib: float = 4.0, repeats: int = 20) -> float:
    """Bytes/s of a device-to-device copy of `gib` GiB (each byte read once and written once: 2 x size moved)."""
    n = int(gib * 2**30)
    src, dst = torch.empty(n, dtype=torch.uint8, device=device), torch.empty(n, dtype=torch.uint8, device=device)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    synchronize(device)
    seconds = (time.perf_counter() - start) / repeats
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
    return 2 * n / seconds


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of fn() after one warm-up call, synchronising the device around each call."""
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def decode_bytes(model, context: int) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes) one decode step reads: every parameter outside the vision tower and the
    projector, less the input embedding (one row of it is read), and keys + values of `context` positions in every
    self-attention layer. (Mllama's cross-attention k/v projections count though their outputs are cached: < 1%.)"""
    embedding = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if not any(part in name for part in ("vision", "projector")) and p is not embedding)
    text = model.config.text_config
    heads = text.num_key_value_heads or text.num_attention_heads
    head_dim = text.hidden_size // text.num_attention_heads
    self_layers = text.num_hidden_layers
    if text.model_type == "mllama_text_model":  # transformers counts its cross-attention layers in num_hidden_layers
        self_layers -= len(text.cross_attention_layers)
    kv = 2 * self_layers * heads * head_dim * context * torch.finfo(DTYPE).bits // 8
    return weights, kv


def measure(name: str, impl: str, args, bandwidth: float) -> list[dict]:
    """One row per cache kind: the prefill rate (the same forward for each) and that cache's decode rate."""
    model, make_inputs = build(name, impl, args.device, args.tiny)
    x = make_inputs(args.prompt_tokens, args.device)
    length = x["input_ids"].shape[1]
    prefill = timed(lambda: model(**x), args.repeats, args.device)
    weights, kv = decode_bytes(model, length + args.new_tokens // 2)
    bound = (weights + kv) / bandwidth
    cuda = args.device == "cuda"
    rows = []
    for cache in args.caches.split(","):
        def generate(n, cache_implementation=CACHES[cache]):
            return lambda: model.generate(**x, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                          cache_implementation=cache_implementation)

        one = timed(generate(1), args.repeats, args.device)
        many = timed(generate(args.new_tokens), args.repeats, args.device)
        per_token = (many - one) / (args.new_tokens - 1)
        rows.append(dict(model=name, impl=impl, cache=cache, prompt=length, prefill_tps=length / prefill,
                         decode_tps=1 / per_token, ms_per_token=per_token * 1e3, weight_gb=weights / 1e9,
                         kv_gb=kv / 1e9, bound_ms=bound * 1e3, of_bound=bound / per_token,
                         peak_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")))
    del model, x
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | implementation | cache | prompt tokens | prefill tokens/s | decode tokens/s | decode ms/token | "
             "weights read (GB) | KV read (GB) | bound ms/token | % of bandwidth bound | peak memory (GB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['impl']} | {r['cache']} | {r['prompt']} | {r['prefill_tps']:.0f} | "
                     f"{r['decode_tps']:.1f} | "
                     f"{r['ms_per_token']:.2f} | {r['weight_gb']:.3f} | {r['kv_gb']:.4f} | {r['bound_ms']:.3f} | "
                     f"{100 * r['of_bound']:.0f}% | {r['peak_gb']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda}); "
              "nothing to measure. Run it on the lent GPU machine (or check the script with --device cpu --tiny).",
              file=sys.stderr)
        return 0
    import transformers

    bandwidth = device_bandwidth(args.device, gib=4.0 if args.device == "cuda" else 0.25)
    print(f"{args.device} copy bandwidth: {bandwidth / 1e9:.0f} GB/s", flush=True)
    rows = []
    for name in args.models.split(","):
        for impl in ("vlmhub",) + (() if args.skip_transformers else ("transformers",)):
            print(f"[gpu] {name} / {impl} ...", flush=True)
            found = measure(name, impl, args, bandwidth)
            rows += found
            print(table(found), flush=True)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.device} (tiny shapes: a smoke test)"
    report = (f"{where}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
              f"bf16, batch 1, random weights{', tiny shapes' if args.tiny else ''}, {args.new_tokens} new tokens, "
              f"medians of {args.repeats}; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s\n\n{table(rows)}")
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
