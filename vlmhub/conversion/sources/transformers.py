"""transformers' own checkpoints (model_type `vit`, `clip`): a saved folder -> the matching vlmhub model.

The keys are read from the saved files (not from transformers' in-memory module names), so checkpoints saved by
any transformers version convert the same way.
"""

import importlib
import json
from pathlib import Path

from ...configuration.clip import VlmhubCLIPConfig
from ...configuration.vit import VlmhubViTConfig
from ...modeling.clip import VlmhubCLIPModel
from ...modeling.vit import VlmhubViTForImageClassification, VlmhubViTModel
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import squeeze_batch


def vit_table(p: str) -> list[Rule]:
    """transformers ViT (`{p}embeddings...`, `{p}encoder.layer.N...`) -> our ViT (`{p}vision_model...`)."""
    src, emb = p.replace(".", r"\."), p + "vision_model.embeddings."
    layer, block = p + "vision_model.encoder.layers.{0}.", src + r"encoder\.layer\.(\d+)\."
    rules = [
        Rule(src + r"embeddings\.cls_token", emb + "class_embedding", squeeze_batch),
        Rule(src + r"embeddings\.position_embeddings", emb + "position_embedding", squeeze_batch),
        Rule(src + r"embeddings\.patch_embeddings\.projection\.(weight|bias)", emb + "patch_embedding.{0}"),
        Rule(src + r"embeddings\.mask_token", None),  # masked-image-modelling only
        Rule(block + r"layernorm_before\.(weight|bias)", layer + "layer_norm1.{1}"),
        Rule(block + r"attention\.output\.dense\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"layernorm_after\.(weight|bias)", layer + "layer_norm2.{1}"),
        Rule(block + r"intermediate\.dense\.(weight|bias)", layer + "mlp.fc1.{1}"),
        Rule(block + r"output\.dense\.(weight|bias)", layer + "mlp.fc2.{1}"),
        Rule(src + r"layernorm\.(weight|bias)", p + "vision_model.post_layernorm.{0}"),
        Rule(src + r"pooler\.dense\.(weight|bias)", p + "pooler.dense.{0}"),
        Rule(r"classifier\.(weight|bias)", "classifier.{0}"),
    ]
    for theirs, ours in (("query", "q"), ("key", "k"), ("value", "v")):
        rules.append(Rule(block + rf"attention\.attention\.{theirs}\.(weight|bias)", layer + f"self_attn.{ours}_proj.{{1}}"))
    return rules


def clip_vision_rules(src: str, dst: str) -> list[Rule]:
    """transformers' CLIP vision tower under the regex prefix `src` -> our VisionTransformer under `dst`."""
    return [
        Rule(src + r"pre_layrnorm\.(weight|bias)", dst + "pre_layernorm.{0}"),
        Rule(src + r"embeddings\.position_embedding\.weight", dst + "embeddings.position_embedding"),
        Rule(src + r"embeddings\.position_ids", None),  # a non-persistent buffer in old checkpoints
        Rule(src + r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", dst + "encoder.layers.{0}.self_attn.o_proj.{1}"),
        Rule(src + r"(embeddings\.(?:class_embedding|patch_embedding\.weight)|post_layernorm\.(?:weight|bias))", dst + "{0}"),
        Rule(src + r"(encoder\.layers\.\d+\.(?:layer_norm[12]|mlp\.fc[12]|self_attn\.[qkv]_proj)\.(?:weight|bias))", dst + "{0}"),
    ]


def clip_table() -> list[Rule]:
    rules = clip_vision_rules(r"vision_model\.", "vision_model.") + [
        Rule(r"text_model\.embeddings\.position_ids", None),
        Rule(r"text_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", "text_model.encoder.layers.{0}.self_attn.o_proj.{1}"),
    ]
    same = [  # names that transformers and vlmhub share
        r"text_model\.encoder\.layers\.\d+\.(layer_norm[12]|mlp\.fc[12]|self_attn\.[qkv]_proj)\.(weight|bias)",
        r"text_model\.embeddings\.(token|position)_embedding\.weight",
        r"text_model\.final_layer_norm\.(weight|bias)",
        r"(visual|text)_projection\.weight",
        r"logit_scale",
    ]
    return rules + [Rule(f"({pattern})", "{0}") for pattern in same]


VIT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "layer_norm_eps", "patch_size", "num_channels", "qkv_bias", "initializer_range")


def vit_config(hf: dict) -> VlmhubViTConfig:
    kwargs = {k: hf[k] for k in VIT_KEYS if k in hf}
    kwargs |= _square(hf.get("image_size", 224), "image_size") | _square(hf.get("patch_size", 16), "patch_size")
    labels = {k: hf[k] for k in ("id2label", "label2id") if hf.get(k)}
    return VlmhubViTConfig(**kwargs, **labels, pooler_output_size=hf.get("pooler_output_size"), pooler_act=hf.get("pooler_act", "tanh"),
                     patch_bias=True, pre_layernorm=False, post_layernorm="all")


def clip_config(hf: dict) -> VlmhubCLIPConfig:
    text, vision = dict(hf.get("text_config") or {}), dict(hf.get("vision_config") or {})
    for sub in (text, vision):
        for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
            sub.pop(key, None)
    vision |= _square(vision.get("image_size", 224), "image_size") | _square(vision.get("patch_size", 32), "patch_size")
    # transformers pools at the highest id when eos_token_id is the legacy 2 (OpenAI's rule), else at the first eos.
    text["pooling"] = "argmax" if text.get("eos_token_id", 2) == 2 else "eos"
    return VlmhubCLIPConfig(text_config=text, vision_config=vision, projection_dim=hf.get("projection_dim", 512),
                      logit_scale_init_value=hf.get("logit_scale_init_value", 2.6592))


def _square(value, name: str) -> dict:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConversionError(f"Non-square {name} {value} is not supported")
        value = value[0]
    return {name: value}


def build_vit(hf: dict, sd: dict, folder: Path):
    config = vit_config(hf)
    if (hf.get("architectures") or [""])[0] == "ViTForImageClassification":
        model, table = VlmhubViTForImageClassification(config), vit_table("vit.")
    else:
        config.add_pooling_layer = "pooler.dense.weight" in sd
        model, table = VlmhubViTModel(config), vit_table("")
    return model, table, _processor(folder, "vit")


def build_clip(hf: dict, sd: dict, folder: Path):
    arch = (hf.get("architectures") or [""])[0]
    if arch not in ("", "CLIPModel"):
        raise ConversionError(f"transformers {arch} checkpoints are not supported; convert a full CLIPModel")
    return VlmhubCLIPModel(clip_config(hf)), clip_table(), _processor(folder, "clip")


# model_type -> builder(hf_config_dict, state_dict, folder) -> (model, key table, processor or None). A string names
# the module (in this package) whose `build` does it, imported only when used.
BUILDERS = {
    "vit": build_vit,
    "clip": build_clip,
    "llava": "transformers_llava",
    "llava_next": "transformers_llava",
    "mllama": "transformers_mllama",
    "blip": "transformers_blip",
    "blip-2": "transformers_blip",
}


def convert(input_path, **options):
    folder = Path(input_path)
    if not (folder / "config.json").exists():
        raise ConversionError(f"{folder} is not a saved transformers model folder (no config.json)")
    hf = json.loads((folder / "config.json").read_text())
    model_type = hf.get("model_type")
    if model_type not in BUILDERS:
        raise ConversionError(f"transformers model_type {model_type!r} has no vlmhub conversion (supported: {sorted(BUILDERS)})")
    build = BUILDERS[model_type]
    if isinstance(build, str):
        build = importlib.import_module(f"{__package__}.{build}").build
    sd = read_state_dict(folder, lazy=True)
    model, table, processor = build(hf, sd, folder)
    load_into(model, sd, table)
    return model.eval(), processor


def _processor(folder: Path, model_type: str):
    """Our image processor (and processor with the saved tokenizer), when the folder has them."""
    from ...processing.convert import processor_from_transformers

    return processor_from_transformers(folder, model_type)
