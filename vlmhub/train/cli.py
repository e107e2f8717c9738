"""`vlmhub-finetune` (also `python -m vlmhub.train`): fine-tune any vlmhub generative model on LLaVA-format data.

    vlmhub-finetune train --model DIR --data data.json --image-folder images/ --output out/ --stage 2 --load-in-4bit
    vlmhub-finetune merge --model DIR --adapter out/ --output merged/

Runs unchanged under `torchrun --nproc_per_node N -m vlmhub.train train ...` and `accelerate launch`.

Every generative family trains the same way: LLaVA, BLIP-2, MiniGPT-4, mPLUG-Owl (soft prompts), Mllama and Flamingo
(gated cross-attention). Each renders the conversations with its processor's chat template; stage 1 trains the
model's `connector_modules` (projector, Q-Former + projection, llama_proj, abstractor, projector + cross-attention,
Perceiver + cross-attention); stage 2 puts LoRA on the language model's own layers (never inside the connector, nor in
the vision tower unless asked) and trains the connector in full.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import set_seed

from .data import load_records
from .loop import TrainArgs, train, write_logs
from .setup import apply_stage, connector_paths, load_for_training, trainable_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmhub-finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="stage 1 (connector) or stage 2 (LoRA + connector)")
    t.add_argument("--model", required=True, help="a vlmhub model folder (converted or saved)")
    t.add_argument("--data", required=True, help="LLaVA conversation JSON / JSON lines")
    t.add_argument("--image-folder", help="folder the records' image paths are relative to")
    t.add_argument("--output", required=True)
    t.add_argument("--stage", type=_stage, default=2, help="1 (connector), 2 (LoRA + connector) or full (everything)")
    t.add_argument("--freeze-vision", action="store_true", help="--stage full: keep the image tower frozen")
    t.add_argument("--connector", help="stage 2: connector weights (connector.safetensors) from a stage-1 run")
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=4, help="global batch size, split over processes")
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--warmup", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-length", type=int, default=2048)
    t.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (for --resume)")
    t.add_argument("--resume", action="store_true", help="continue exactly after the last checkpoint in --output")
    t.add_argument("--load-in-4bit", action="store_true")
    t.add_argument("--load-in-8bit", action="store_true")
    t.add_argument("--lora-targets", default="q_proj,v_proj")
    t.add_argument("--lora-on-vision", action="store_true", help="also put LoRA on the vision tower")
    t.add_argument("--lora-rank", type=int, default=8)
    t.add_argument("--lora-alpha", type=int, default=16)
    t.add_argument("--lora-dropout", type=float, default=0.05)
    t.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # tests: stop as if killed
    m = sub.add_parser("merge", help="fold a LoRA adapter into its base and save a model the Auto classes load")
    m.add_argument("--model", required=True)
    m.add_argument("--adapter", required=True)
    m.add_argument("--output", required=True)
    return p


def _stage(value: str):
    if value not in ("1", "2", "full"):
        raise argparse.ArgumentTypeError(f"--stage must be 1, 2 or full, not {value!r}")
    return value if value == "full" else int(value)


def run_train(a) -> dict:
    if a.freeze_vision and a.stage != "full":
        raise SystemExit("--freeze-vision is for --stage full: stages 1 and 2 already keep the image tower frozen")
    set_seed(a.seed)  # before LoRA's random init, so runs (and resumed runs) start from the same weights
    model, processor = load_for_training(a.model, a.load_in_4bit, a.load_in_8bit)
    if a.connector:
        load_connector(model, a.connector)
    model = apply_stage(model, a.stage, a.lora_targets.split(","), a.lora_on_vision, a.lora_rank, a.lora_alpha, a.lora_dropout,
                        a.freeze_vision)
    report = trainable_report(model)
    print(f"trainable parameters: {report['trainable']:,} of {report['total']:,} {report['by_part']}", file=sys.stderr)
    args = TrainArgs(output=a.output, stage=a.stage, steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup,
                     seed=a.seed, save_every=a.save_every, max_length=a.max_length, stop_after=a.stop_after)
    result = train(model, processor, load_records(a.data), args, a.image_folder, resume=a.resume)
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} samples: {result['skipped']}", file=sys.stderr)
    if result["accelerator"].is_main_process and (a.stop_after is None or a.stop_after >= a.steps):
        save_result(result["model"], processor, Path(a.output), a.stage)
        write_logs(Path(a.output), args.history, {"trainable": report, "skipped": result["skipped"]})
    return {"history": args.history, "model": result["model"], "trainable": report}


def save_result(model, processor, out: Path, stage: int):
    """Stage 2: the peft adapter (LoRA + the connector in full). Stage 1: connector.safetensors. Full: the model."""
    out.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out)
    if stage in (2, "full"):
        model.save_pretrained(out)
        return
    prefixes = tuple(path + "." for path in connector_paths(model))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith(prefixes)}
    save_file(state, out / "connector.safetensors")


def load_connector(model, path):
    from safetensors.torch import load_file

    state = load_file(path)
    missing = [k for k in state if k not in model.state_dict()]
    if missing:
        raise ValueError(f"{path} has weights this model lacks: {missing}")
    model.load_state_dict(state, strict=False)


def run_merge(a):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32)  # merge into full precision
    merged = PeftModel.from_pretrained(base, a.adapter).merge_and_unload()
    merged.save_pretrained(a.output)
    AutoProcessor.from_pretrained(a.adapter).save_pretrained(a.output)
    return merged


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    if a.command == "train":
        history = run_train(a)["history"]
        print(json.dumps({"final_loss": history[-1]["loss"] if history else None}))
    else:
        run_merge(a)
        print(f"wrote {a.output}")
    return 0
