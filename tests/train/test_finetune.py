"""Fine-tuning on CPU with a tiny LLaVA: 4-bit + LoRA lowers the loss, the right modules train, adapters reload and
merge, a killed run resumes exactly, two processes match one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlmhub.train.cli import main as finetune
from vlmhub.train.data import ConversationCollator, load_records
from vlmhub.train.loop import check_gradients


def args(model, scenes, out, *extra):
    return ["train", "--model", str(model), "--data", str(scenes / "train.json"), "--image-folder", str(scenes / "images"),
            "--output", str(out), "--batch-size", "4", "--lr", "2e-2", *map(str, extra)]


def probe(folder, scenes):
    processor = AutoProcessor.from_pretrained(folder)
    batch = ConversationCollator(processor, scenes / "images")(load_records(scenes / "test.json")[:2])
    return {k: v for k, v in batch.items() if k != "labels"}


def test_labels_cover_only_the_answers(tiny_model, tiny_scenes):
    processor = AutoProcessor.from_pretrained(tiny_model)
    record = load_records(tiny_scenes / "train.json")[1]  # a one-question record
    sample = ConversationCollator(processor, tiny_scenes / "images").encode(record)
    trained = processor.tokenizer.decode(sample["input_ids"][sample["labels"] != -100])
    assert trained.replace(" ", "") == (record["conversations"][1]["value"] + "</s>").replace(" ", "")
    assert (sample["input_ids"] == processor.image_token_id).sum() == 16


def test_qlora_lowers_loss_trains_only_intended_modules_and_reloads(tiny_model, tiny_scenes, tmp_path, capsys):
    out = tmp_path / "qlora"
    assert finetune(args(tiny_model, tiny_scenes, out, "--steps", 30, "--load-in-4bit")) == 0
    log = json.loads((out / "training_log.json").read_text())
    losses = [h["loss"] for h in log["history"]]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses
    parts = log["trainable"]["by_part"]
    assert set(parts) == {"language_model", "multi_modal_projector"} and "vision_tower" not in parts
    assert "trainable parameters" in capsys.readouterr().err
    assert (out / "loss_curve.png").stat().st_size > 1000 and (out / "adapter_model.safetensors").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert any(".q_proj.lora_A" in k for k in adapter) and not any("vision_tower" in k and "lora" in k for k in adapter)
    assert any("multi_modal_projector" in k for k in adapter)  # the connector trained in full travels with it


def test_adapter_reload_and_merge_give_the_same_logits(tiny_model, tiny_scenes, tmp_path):
    out = tmp_path / "lora"
    assert finetune(args(tiny_model, tiny_scenes, out, "--steps", 6)) == 0
    x = probe(tiny_model, tiny_scenes)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model)
    adapted = PeftModel.from_pretrained(base, out).eval()
    assert finetune(["merge", "--model", str(tiny_model), "--adapter", str(out), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    plain = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        a, b, c = adapted(**x).logits, merged(**x).logits, plain(**x).logits
    assert (a - b).abs().max() <= 1e-4 and (a - c).abs().max() > 1e-3  # the adapter changed the model


def test_killed_run_resumes_to_the_same_weights(tiny_model, tiny_scenes, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert finetune(args(tiny_model, tiny_scenes, whole, "--steps", 8, "--save-every", 4)) == 0
    assert finetune(args(tiny_model, tiny_scenes, killed, "--steps", 8, "--save-every", 4, "--stop-after", 4)) == 0
    assert not (killed / "adapter_model.safetensors").exists()
    assert finetune(args(tiny_model, tiny_scenes, killed, "--steps", 8, "--save-every", 4, "--resume")) == 0
    a, b = load_file(whole / "adapter_model.safetensors"), load_file(killed / "adapter_model.safetensors")
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    la = [h["loss"] for h in json.loads((whole / "training_log.json").read_text())["history"]]
    lb = [h["loss"] for h in json.loads((killed / "training_log.json").read_text())["history"]]
    assert la == pytest.approx(lb, abs=1e-6)


def test_two_processes_match_one(tiny_model, tiny_scenes, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert finetune(args(tiny_model, tiny_scenes, one, "--steps", 4, "--lora-dropout", 0)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "vlmhub.train", *args(tiny_model, tiny_scenes, two, "--steps", 4, "--lora-dropout", 0)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    la = [h["loss"] for h in json.loads((one / "training_log.json").read_text())["history"]]
    lb = [h["loss"] for h in json.loads((two / "training_log.json").read_text())["history"]]
    assert la == pytest.approx(lb, abs=1e-5)


def test_truncated_image_samples_are_skipped_and_reported(tiny_model, tiny_scenes):
    processor = AutoProcessor.from_pretrained(tiny_model)
    collator = ConversationCollator(processor, tiny_scenes / "images", max_length=10)
    records = load_records(tiny_scenes / "train.json")[:2]
    with pytest.raises(ValueError, match="skipped"):
        collator(records)
    assert all("image tokens end at" in why for why in collator.skipped.reasons.values())


def test_zero_gradients_stop_training():
    layer = torch.nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().mul(0).backward()
    with pytest.raises(RuntimeError, match="AVX512-BF16"):
        check_gradients(layer)
