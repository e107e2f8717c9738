"""The training loop: one process or many (torchrun / accelerate launch), exact resume, logs and a loss curve.

Data order is a pure function of (seed, epoch): every process computes the same global batches and takes its share,
so a resumed run and a run on more processes see exactly the samples a single uninterrupted run would. The loss is
summed over tokens and divided by the token count of the whole global batch, so gradients do not depend on how the
batch is split across processes.
"""

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from .data import ConversationCollator


@dataclass
class TrainArgs:
    output: str
    stage: int | str = 2
    steps: int = 100
    batch_size: int = 4  # global batch, split over the processes
    lr: float = 2e-4
    warmup: int = 0
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    max_length: int = 2048
    stop_after: int | None = None  # stop (as if killed) after this many steps, keeping the checkpoint
    history: list = field(default_factory=list)


def batch_records(records: list, args: TrainArgs, step: int, rank: int, world: int) -> list:
    """This process's share of global batch `step` (epochs reshuffle with seed + epoch)."""
    per_epoch = len(records) // args.batch_size
    if per_epoch == 0:
        raise ValueError(f"{len(records)} records cannot fill one batch of {args.batch_size}")
    epoch, index = divmod(step, per_epoch)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(args.seed + epoch)).tolist()
    batch = order[index * args.batch_size : (index + 1) * args.batch_size]
    return [records[i] for i in batch[rank::world]]


def train(model, processor, records: list, args: TrainArgs, image_folder=None, resume: bool = False) -> dict:
    accelerator = Accelerator()
    if args.batch_size % accelerator.num_processes:
        raise ValueError(f"batch size {args.batch_size} does not split over {accelerator.num_processes} processes")
    torch.manual_seed(args.seed)
    collator = ConversationCollator(processor, image_folder, args.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=args.warmup, num_training_steps=args.steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    out = Path(args.output)
    step = _resume(accelerator, out, args) if resume else 0
    progress = _progress(accelerator, args.steps, step)
    model.train()
    while step < args.steps and (args.stop_after is None or step < args.stop_after):
        batch = collator(batch_records(records, args, step, accelerator.process_index, accelerator.num_processes))
        start = time.perf_counter()
        loss, tokens = _step(accelerator, model, batch)
        if step == 0:
            check_gradients(model)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        args.history.append({"step": step, "loss": loss, "tokens_per_s": tokens / (time.perf_counter() - start)})
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{args.history[-1]['tokens_per_s']:.0f}")
        if args.save_every and step % args.save_every == 0 or step in (args.steps, args.stop_after):
            _checkpoint(accelerator, out, args, step)
    progress.close()
    return {"model": accelerator.unwrap_model(model), "accelerator": accelerator, "skipped": collator.skipped.reasons}


def _step(accelerator, model, batch) -> tuple[float, int]:
    """One forward/backward; returns the global mean token loss and the global count of trained tokens."""
    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
    local = (batch["labels"][:, 1:] != -100).sum()
    total = accelerator.reduce(local.clone(), reduction="sum")
    # mean over the global batch's tokens; DDP averages gradients over processes, hence * num_processes
    out = model(**batch, num_items_in_batch=total)
    accelerator.backward(out.loss * accelerator.num_processes)
    summed = accelerator.reduce(out.loss.detach() * total, reduction="sum") / accelerator.num_processes
    return (summed / total).item(), int(total)


def check_gradients(model) -> None:
    """Stop if no trainable parameter got a gradient: bitsandbytes' AVX512-BF16 inference repacking (an eval-mode
    forward of a 4-bit model before training) leaves LoRA with zero gradients and only a warning."""
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    if not any(g is not None and g.abs().sum() > 0 for g in grads):
        raise RuntimeError(
            "The first step gave no gradient to any trainable parameter. With a 4-bit model this is bitsandbytes' "
            "AVX512-BF16 trap: an eval-mode forward before training repacked the weights. Load a fresh model for training."
        )


def _checkpoint(accelerator, out: Path, args: TrainArgs, step: int):
    folder = out / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "trainer_state.json").write_text(json.dumps({"step": step, "args": asdict(args)}, indent=1))


def _resume(accelerator, out: Path, args: TrainArgs) -> int:
    folders = sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not folders:
        raise FileNotFoundError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    accelerator.load_state(str(folders[-1]))
    state = json.loads((folders[-1] / "trainer_state.json").read_text())
    args.history[:] = state["args"]["history"]
    return state["step"]


def _progress(accelerator, total: int, start: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not accelerator.is_local_main_process, desc="training")


def write_logs(out: Path, history: list, extra: dict) -> None:
    """training_log.json and loss_curve.png."""
    (out / "training_log.json").write_text(json.dumps({"history": history, **extra}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set(xlabel="step", ylabel="loss", title="training loss", yscale="log" if all(h["loss"] > 0 for h in history) else "linear")
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)
