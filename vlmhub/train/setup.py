"""Model preparation for the two training stages: loading (optionally 4/8-bit), freezing, LoRA by module path."""

import re

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig


def quantization(load_in_4bit: bool, load_in_8bit: bool, keep: list[str]):
    """nf4 + double quantisation with bf16 compute (QLoRA), or int8; the connector and lm_head stay unquantised."""
    if load_in_4bit and load_in_8bit:
        raise ValueError("Choose one of --load-in-4bit and --load-in-8bit")
    if load_in_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16, llm_int8_skip_modules=keep + ["lm_head"])
    if load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep + ["lm_head"])
    return None


def load_for_training(path, load_in_4bit=False, load_in_8bit=False, device_map=None):
    """(model, processor) from a vlmhub folder. A quantised model gets peft's k-bit preparation and checkpointing.

    Load a fresh model for training: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights during an eval-mode
    forward, after which LoRA receives zero gradients (the loop checks for it)."""
    from peft import prepare_model_for_kbit_training

    processor = AutoProcessor.from_pretrained(path)
    keep = list(model_class(path).connector_modules)
    quant = quantization(load_in_4bit, load_in_8bit, keep)
    kwargs = dict(quantization_config=quant, device_map=device_map or ("cpu" if quant else None))
    model = AutoModelForImageTextToText.from_pretrained(path, **{k: v for k, v in kwargs.items() if v is not None})
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return model, processor


def model_class(path):
    """The vlmhub class AutoModelForImageTextToText builds for the folder (read from its config, nothing loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(AutoConfig.from_pretrained(path))]


def lora_target_regex(targets: list[str], on_vision: bool) -> str:
    """Module paths LoRA wraps: `targets` inside the language model (and the vision tower when asked).

    By path, not by suffix: peft's plain names would also hit the vision tower's and cross-attention's q_proj/v_proj."""
    scopes = ["language_model"] + (["vision_tower", "vision_model"] if on_vision else [])
    return rf"^(?:{'|'.join(scopes)})\..*\.(?:{'|'.join(map(re.escape, targets))})$"


def apply_stage(model, stage, lora_targets=("q_proj", "v_proj"), lora_on_vision=False, rank=8, alpha=16, dropout=0.05):
    """Stage 1: only the connector trains. Stage 2: LoRA on the language model + the connector in full.
    "full": every weight trains (small models trained from scratch, such as the embedded defaults)."""
    connector = list(model.connector_modules)
    if stage == "full":
        return model.requires_grad_(True)
    if stage == 1:
        model.requires_grad_(False)
        for name in connector:
            getattr(model, name).requires_grad_(True)
        return model
    if stage != 2:
        raise ValueError(f"--stage must be 1 or 2, got {stage}")
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_regex(list(lora_targets), lora_on_vision),
                        modules_to_save=connector, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_report(model) -> dict:
    """Counts of trainable parameters by top-level part, and the total."""
    parts, total, trainable = {}, 0, 0
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            part = name.removeprefix("base_model.model.").split(".")[0]
            parts[part] = parts.get(part, 0) + param.numel()
    return {"trainable": trainable, "total": total, "by_part": parts}
