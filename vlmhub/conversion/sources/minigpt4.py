"""MiniGPT-4 (Vision-CAIR/MiniGPT-4): the eval YAML that composes the release file with its frozen parts.

`convert(path)` takes the YAML (`model: {ckpt, q_former_model, llama_model, num_query_token, has_qformer, ...}`) or
a folder holding exactly one. Paths in it are relative to the YAML's folder. The parts, in MiniGPT-4's loading order
(later wins): the EVA ViT (`eva_vit*.pth` beside the YAML, or `vision=`), the Q-Former file (LAVIS layout:
ln_vision, query_tokens, Qformer.bert.*; its t5/opt projection is ignored, as MiniGPT-4 ignores it), the HF LLM
folder, and the release file (`llama_proj.*`). The Llama-2 variant (`has_qformer: False`) has no Q-Former file and
a freshly initialised, frozen `ln_vision` (weight 1, bias 0), which is what its released model runs.

As with LAVIS, head counts are not stored: `num_attention_heads` / `qformer_num_attention_heads` when the widths are
not EVA-g's 1408 / BERT's 768.
"""

from pathlib import Path

import torch
import yaml

from ...configuration.minigpt4 import VlmhubMiniGPT4Config
from ...modeling.minigpt4 import VlmhubMiniGPT4ForConditionalGeneration
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from .lavis_blip2 import (eva_rules, find_vision, lavis_qformer_rules, lm_rules, qformer_config_from, vision_config_from,
                          with_parts)

LM_PREFIX = "llama_model."


def read_yaml(input_path) -> tuple[dict, Path]:
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"No MiniGPT-4 config at {path}")
    if path.is_dir():
        found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
        if len(found) != 1:
            raise ConversionError(f"{path} holds {len(found)} YAML files ({[p.name for p in found]}); pass the eval YAML")
        path = found[0]
    model = (yaml.safe_load(path.read_text()) or {}).get("model")
    if not isinstance(model, dict) or "llama_model" not in model:
        raise ConversionError(f"{path} is not a MiniGPT-4 eval config (no model.llama_model)")
    return model, path.parent


def gather(cfg: dict, folder: Path, vision) -> dict:
    """One state dict in MiniGPT-4's names, the later sources winning like MiniGPT-4's loading order."""
    sd = {"visual_encoder." + k: v for k, v in find_vision(folder, vision).items()}
    if cfg.get("has_qformer", True):
        if not cfg.get("q_former_model"):
            raise ConversionError("the config uses a Q-Former but names no q_former_model")
        sd |= read_state_dict(folder / cfg["q_former_model"])
    sd = with_parts(sd, LM_PREFIX, read_state_dict(folder / cfg["llama_model"]))
    if cfg.get("ckpt"):
        sd |= read_state_dict(folder / cfg["ckpt"])
    if "llama_proj.weight" not in sd:
        raise ConversionError("no llama_proj weights: the config names no release checkpoint (model.ckpt) holding them")
    width = sd["visual_encoder.patch_embed.proj.weight"].shape[0]
    sd.setdefault("ln_vision.weight", torch.ones(width))  # the Llama-2 variant's untrained, frozen ln_vision
    sd.setdefault("ln_vision.bias", torch.zeros(width))
    return sd


def convert(input_path, *, vision=None, num_attention_heads=None, qformer_num_attention_heads=None,
            vision_layers=None, **options):
    from transformers import AutoConfig, AutoTokenizer

    cfg, folder = read_yaml(input_path)
    sd = gather(cfg, folder, vision)
    use_qformer = bool(cfg.get("has_qformer", True))
    vision_config = vision_config_from(sd, num_attention_heads=num_attention_heads, vision_layers=vision_layers)
    qformer_config = qformer_config_from(sd, qformer_num_attention_heads) if use_qformer else {}
    qformer_config["use_text_input"] = False
    lm_folder = folder / cfg["llama_model"]
    text_config = AutoConfig.from_pretrained(lm_folder).to_dict()
    for key in ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path"):
        text_config.pop(key, None)
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    image_token_id, grow = len(tokenizer), len(tokenizer) >= text_config["vocab_size"]
    text_config["vocab_size"] += grow
    config = VlmhubMiniGPT4Config(vision_config=vision_config, qformer_config=qformer_config, text_config=text_config,
                                  use_qformer=use_qformer, image_token_id=image_token_id)
    model = VlmhubMiniGPT4ForConditionalGeneration(config)
    embed = next(n for n, w in model.named_parameters() if w is model.get_input_embeddings().weight)
    table = eva_rules("visual_encoder.", "vision.vision_model.", vision_config["num_hidden_layers"])
    table += [Rule(r"ln_vision\.(weight|bias)", "vision.ln_vision.{0}"), Rule(r"llama_proj\.(weight|bias)", "llama_proj.{0}"),
              Rule(r"(t5|opt|llm)_proj\..+", None)]  # the Q-Former file's own LM projection, unused by MiniGPT-4
    table += lavis_qformer_rules(False) if use_qformer else []
    table += lm_rules(embed, LM_PREFIX, grow)
    load_into(model, sd, table)
    model.generation_config.suppress_tokens = [image_token_id]  # it only marks where the image goes
    return model.eval(), _processor(cfg, tokenizer, vision_config["image_size"], config.num_image_tokens)


def _processor(cfg: dict, tokenizer, size: int, num_image_tokens: int):
    from ...processing.minigpt4 import PROMPT_TEMPLATE, VlmhubMiniGPT4ImageProcessor, VlmhubMiniGPT4Processor

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # MiniGPT-4's pad token '$$' is not in the vocabulary: it is unk
    image_processor = VlmhubMiniGPT4ImageProcessor(size={"height": size, "width": size})
    return VlmhubMiniGPT4Processor(image_processor, tokenizer, num_image_tokens=num_image_tokens,
                                   prompt_template=cfg.get("prompt_template", PROMPT_TEMPLATE))
