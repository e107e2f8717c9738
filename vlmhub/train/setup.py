"""Model preparation for the two training stages: loading (optionally 4/8-bit), freezing, LoRA by module path.

A model class names its connector in `connector_modules`: each name is a top-level module (`multi_modal_projector`)
or the last part of module paths inside the model (`gated_cross_attn`: every cross-attention block that Mllama and
Flamingo put in their decoders). Stage 1 trains exactly those modules; stage 2 trains them in full beside LoRA,
which never goes inside them.
"""

import re

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig


VISION_SCOPES = ("vision_tower", "vision_model", "vision")  # where the families keep their vision tower


def quantization(load_in_4bit: bool, load_in_8bit: bool, keep: list[str]):
    """nf4 + double quantisation with bf16 compute (QLoRA), or int8; the connector (`keep`: connector_modules names,
    matched at any depth) and lm_head stay unquantised."""
    if load_in_4bit and load_in_8bit:
        raise ValueError("Choose one of --load-in-4bit and --load-in-8bit")
    keep = [rf"(?:.*\.)?{re.escape(name)}" for name in keep]  # transformers matches these from the start of a path
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
        model = prepare_model_for_kbit_training(  # non-reentrant: torch asks for the choice to be explicit
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


def model_class(path):
    """The vlmhub class AutoModelForImageTextToText builds for the folder (read from its config, nothing loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(AutoConfig.from_pretrained(path))]


def outermost_paths(model, names: set[str]) -> list[str]:
    """Paths of the modules whose own name is in `names`, leaving out any inside another of them."""
    found = [path for path, _ in model.named_modules() if path.rsplit(".", 1)[-1] in names]
    return [path for path in found if not any(path.startswith(outer + ".") for outer in found)]


def connector_paths(model) -> list[str]:
    """Paths of the modules that make up the connector (see the module docstring), outermost only."""
    names = set(model.connector_modules)
    paths = outermost_paths(model, names)
    missing = names - {path.rsplit(".", 1)[-1] for path in paths}
    if missing:
        raise ValueError(f"{type(model).__name__}.connector_modules names {sorted(missing)}, which the model lacks")
    return paths


def vision_tower_paths(model) -> list[str]:
    """Where the model keeps its image tower (`vision_tower` or `vision_model`, outermost): not BLIP-2's ln_vision."""
    paths = outermost_paths(model, {"vision_tower", "vision_model"})
    if not paths:
        raise ValueError(f"{type(model).__name__} has no vision_tower or vision_model to freeze")
    return paths


def lora_target_regex(targets: list[str], on_vision: bool, exclude: list[str] = ()) -> str:
    """Module paths LoRA wraps: `targets` inside the language model (and the vision tower when asked), never inside a
    module named in `exclude` (the connector: Mllama's and Flamingo's cross-attention blocks sit in the decoder).

    By path, not by suffix: peft's plain names would also hit the vision tower's and cross-attention's q_proj/v_proj."""
    scopes = ["language_model"] + (list(VISION_SCOPES) if on_vision else [])
    outside = rf"(?!(?:.*\.)?(?:{'|'.join(map(re.escape, exclude))})\.)" if exclude else ""
    return rf"^(?:{'|'.join(scopes)})\.{outside}.*\.(?:{'|'.join(map(re.escape, targets))})$"


def apply_stage(model, stage, lora_targets=("q_proj", "v_proj"), lora_on_vision=False, rank=8, alpha=16, dropout=0.05,
                freeze_vision=False):
    """Stage 1: only the connector trains. Stage 2: LoRA on the language model + the connector in full.
    "full": every weight trains (small models trained from scratch, such as the embedded defaults), except the image
    tower when `freeze_vision` (as LLaVA, BLIP-2 and Flamingo keep their pretrained towers frozen)."""
    if stage == "full":
        model.requires_grad_(True)
        for path in vision_tower_paths(model) if freeze_vision else []:
            model.get_submodule(path).requires_grad_(False)
        return model
    connector = connector_paths(model)
    if stage == 1:
        model.requires_grad_(False)
        for path in connector:
            model.get_submodule(path).requires_grad_(True)
        return model
    if stage != 2:
        raise ValueError(f"--stage must be 1 or 2, got {stage}")
    from peft import LoraConfig, get_peft_model

    targets = lora_target_regex(list(lora_targets), lora_on_vision, exclude=list(model.connector_modules))
    # modules_to_save by full path: peft matches its entries as suffixes of module paths
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        modules_to_save=connector, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_report(model) -> dict:
    """Counts of trainable parameters by top-level part and by kind (LoRA, connector, other), and the total."""
    parts, kinds, total, trainable = {}, {}, 0, 0
    connector = tuple(f".{name}." for name in model.connector_modules)
    for name, param in model.named_parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
            path = name.removeprefix("base_model.model.")
            part = path.split(".")[0]
            parts[part] = parts.get(part, 0) + param.numel()
            kind = "lora" if ".lora_" in path else "connector" if any(c in f".{path}" for c in connector) else "other"
            kinds[kind] = kinds.get(kind, 0) + param.numel()
    return {"trainable": trainable, "total": total, "by_part": parts, "by_kind": kinds}
