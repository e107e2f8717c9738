"""The original LLaVA release (haotian-liu/LLaVA): a checkpoint folder with `mm_*` config fields, `model.mm_projector.*`,
`model.vision_tower.*`, `model.image_newline`, plus the CLIP tower folder named by `mm_vision_tower`.

LLaVA marks images with the sentinel id -200; we add a real `<image>` token at id = vocab_size (one more embedding
and lm_head row, the mean of the others) and suppress it in generation, so text logits and greedy outputs stay those
of the original.
"""

import json
from pathlib import Path

from transformers import GenerationConfig, LlamaConfig

from ...configuration.llava import VlmhubLlavaConfig
from ...modeling.llava import VlmhubLlavaForConditionalGeneration
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import append_mean_row
from .transformers import clip_vision_rules

TOWER = "tower::"  # prefix of the standalone tower's keys in the combined state dict


def table(tower_from_checkpoint: bool) -> list[Rule]:
    ckpt_tower, standalone = r"model\.vision_tower\.vision_tower\.vision_model\.", TOWER.replace(":", r"\:") + r"vision_model\."
    used, unused = (ckpt_tower, standalone) if tower_from_checkpoint else (standalone, ckpt_tower)
    return [
        *clip_vision_rules(used, "vision_tower."),
        Rule(unused + ".*", None),  # the other copy of the tower
        Rule(r"tower\:\:(text_model|visual_projection|text_projection|logit_scale).*", None),  # CLIP's text half
        Rule(r"model\.mm_projector\.(weight|bias)", "multi_modal_projector.linear_1.{0}"),  # projector "linear"
        *[Rule(rf"model\.mm_projector\.{2 * i}\.(weight|bias)", f"multi_modal_projector.linear_{i + 1}.{{0}}") for i in range(8)],
        Rule(r"model\.image_newline", "image_newline"),
        Rule(r"model\.embed_tokens\.weight", "language_model.model.embed_tokens.weight", append_mean_row),
        Rule(r"lm_head\.weight", "language_model.lm_head.weight", append_mean_row),
        Rule(r".*rotary_emb\.inv_freq", None),
        Rule(r"model\.((?:layers|norm)\..*)", "language_model.model.{0}"),
    ]


def llava_config(raw: dict, tower: dict) -> VlmhubLlavaConfig:
    text = {k: v for k, v in raw.items() if not k.startswith(("mm_", "_")) and k not in NOT_LLAMA}
    text["vocab_size"] = raw["vocab_size"] + 1  # room for <image>
    vision = tower.get("vision_config", tower)
    vision = {k: v for k, v in vision.items() if k not in ("model_type", "transformers_version", "architectures", "torch_dtype", "dtype")}
    aspect = raw.get("image_aspect_ratio") or "square"
    pinpoints = raw.get("image_grid_pinpoints")
    if aspect == "anyres" and not isinstance(pinpoints, list):
        raise ConversionError(f"image_grid_pinpoints {pinpoints!r} is not a list of [width, height] canvases")
    return VlmhubLlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**text).to_dict() | {"model_type": "llama"},
        image_token_id=raw["vocab_size"],
        projector_type=raw.get("mm_projector_type", "linear"),
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=raw.get("mm_vision_select_feature", "patch"),
        image_aspect_ratio=aspect if aspect in ("pad", "anyres") else "square",
        image_grid_pinpoints=[[h, w] for w, h in pinpoints] if aspect == "anyres" else None,  # LLaVA writes (w, h)
        patch_merge_type=raw.get("mm_patch_merge_type", "flat"),
    )


# LLaVA training fields that are not part of a Llama config.
NOT_LLAMA = {"architectures", "model_type", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length",
             "tokenizer_padding_side", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "tune_mm_vision_resampler",
             "unfreeze_mm_vision_tower", "use_mm_proj", "image_crop_resolution", "image_split_resolution",
             "transformers_version", "torch_dtype"}


def find_tower(folder: Path, name: str, override: str | None) -> Path:
    candidates = [Path(override)] if override else [Path(name), folder / name, folder.parent / name]
    for path in candidates:
        if (path / "config.json").exists():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise ConversionError(f"Vision tower {name!r} not found (tried {tried}); pass --vision-tower PATH to its folder")


def convert(input_path, vision_tower: str | None = None, **options):
    folder = Path(input_path)
    raw = json.loads((folder / "config.json").read_text())
    if "mm_vision_tower" not in raw:
        raise ConversionError(f"{folder}/config.json has no mm_vision_tower: not an original LLaVA checkpoint")
    tower_dir = find_tower(folder, raw["mm_vision_tower"], vision_tower)
    config = llava_config(raw, json.loads((tower_dir / "config.json").read_text()))
    state = read_state_dict(folder)
    from_checkpoint = bool(raw.get("unfreeze_mm_vision_tower"))  # 1.6 fine-tuned the tower: its copy wins
    state |= {TOWER + k: v for k, v in read_state_dict(tower_dir).items()}
    model = load_into(VlmhubLlavaForConditionalGeneration(config), state, table(from_checkpoint)).eval()
    model.generation_config = GenerationConfig.from_model_config(config.text_config)
    model.generation_config.suppress_tokens = [config.image_token_id]  # the original cannot emit it
    return model, _processor(folder, tower_dir, config)


def _processor(folder: Path, tower_dir: Path, config: VlmhubLlavaConfig):
    from ...processing.llava import processor_from_llava

    return processor_from_llava(folder, tower_dir, config)
