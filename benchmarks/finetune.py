"""Fine-tuning cost: trainable parameters, peak memory and step time for LoRA on a 4-bit base vs a full-precision
base, on the same LLaVA (each configuration in its own process, so peak RSS is its own).

    python benchmarks/finetune.py [--size small|tiny] [--steps 5] [--out benchmarks/results/finetune.md]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "tiny": dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7),
                 text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)),
    "small": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16),
                  text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16)),
}


def build(folder: Path, size: str):
    import vlmhub
    from vlmhub.data import vocab

    s = SIZES[size]
    tokenizer = vocab.build_tokenizer()
    crop = s["vision"]["image_size"]
    image_processor = vlmhub.LlavaImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}, image_aspect_ratio="pad")
    processor = vlmhub.LlavaProcessor(image_processor, tokenizer, patch_size=s["vision"]["patch_size"])
    config = vlmhub.LlavaConfig(vision_config=s["vision"], image_token_id=processor.image_token_id, image_aspect_ratio="pad",
                                text_config=dict(model_type="llama", vocab_size=len(tokenizer), pad_token_id=0, **s["text"]))
    vlmhub.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def measure(folder: str, data: str, images: str, four_bit: bool, steps: int) -> dict:
    """Runs in a child process: load, LoRA, `steps` optimisation steps; peak RSS and median step time."""
    import torch

    from vlmhub.train.data import ConversationCollator, load_records
    from vlmhub.train.loop import TrainArgs, batch_records
    from vlmhub.train.setup import apply_stage, load_for_training, trainable_report

    model, processor = load_for_training(folder, load_in_4bit=four_bit)
    model = apply_stage(model, 2)
    collator, records = ConversationCollator(processor, images), load_records(data)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    args, times = TrainArgs(output="-", batch_size=4), []
    model.train()
    for step in range(steps):
        batch = collator(batch_records(records, args, step, 0, 1))
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step(), optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    report = trainable_report(model)
    return {"trainable": report["trainable"], "total": report["total"], "step_s": sorted(times)[len(times) // 2],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="small")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/finetune.md")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        folder, data, images, four_bit, steps = a.child
        print(json.dumps(measure(folder, data, images, four_bit == "1", int(steps))))
        return
    from vlmhub.data import scenes

    work = Path(tempfile.mkdtemp())
    build(work / "model", a.size)
    scenes.generate(work / "data", train=8, test=0, size=SIZES[a.size]["vision"]["image_size"])
    rows = []
    for four_bit in ("1", "0"):
        cmd = [sys.executable, __file__, "--child", str(work / "model"), str(work / "data" / "train.json"), str(work / "data" / "images"), four_bit, str(a.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append({"base": "4-bit nf4" if four_bit == "1" else "fp32", **json.loads(out)})
    lines = ["| base | trainable params | total params | step (s, batch 4) | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {r['base']} | {r['trainable']:,} | {r['total']:,} | {r['step_s']:.2f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    report = f"LoRA (q_proj, v_proj; connector in full) on the {a.size} LLaVA, CPU\n\n" + "\n".join(lines)
    print(report)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
