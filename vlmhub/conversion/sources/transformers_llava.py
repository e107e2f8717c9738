"""transformers' `llava` and `llava_next` folders -> VlmhubLlavaForConditionalGeneration."""

from pathlib import Path

from ...configuration.llava import TRANSFORMERS_SELECT_STRATEGIES, VlmhubLlavaConfig
from ...modeling.llava import VlmhubLlavaForConditionalGeneration
from ..engine import ConversionError, Rule
from .transformers import clip_vision_rules

TABLE = [
    *clip_vision_rules(r"(?:model\.)?vision_tower\.(?:vision_model\.)?", "vision_tower."),
    Rule(r"(?:model\.)?multi_modal_projector\.(linear_\d)\.(weight|bias)", "multi_modal_projector.{0}.{1}"),
    Rule(r"(?:model\.)?image_newline", "image_newline"),
    Rule(r".*rotary_emb\.inv_freq", None),  # a buffer older checkpoints saved
    # transformers saves language_model.model.* and language_model.lm_head (older: language_model.*, lm_head).
    Rule(r"(?:model\.)?language_model\.(model\.|lm_head\.)(.*)", "language_model.{0}{1}"),
    Rule(r"(?:model\.)?language_model\.(.*)", "language_model.model.{0}"),
    Rule(r"lm_head\.weight", "language_model.lm_head.weight"),
]


def llava_config(hf: dict) -> VlmhubLlavaConfig:
    vision = dict(hf.get("vision_config") or {})
    if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ConversionError(f"Only CLIP vision towers are supported, not {vision['model_type']!r}")
    for key in ("model_type", "transformers_version", "architectures", "dtype", "torch_dtype"):
        vision.pop(key, None)
    next_ = hf["model_type"] == "llava_next"
    projector_act = hf.get("projector_hidden_act", "gelu")
    return VlmhubLlavaConfig(
        vision_config=vision,
        text_config=hf.get("text_config"),
        image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
        projector_type=f"mlp2x_{projector_act}",
        projector_bias=hf.get("multimodal_projector_bias", True),
        vision_feature_layer=hf.get("vision_feature_layer", -2),
        vision_feature_select_strategy=TRANSFORMERS_SELECT_STRATEGIES[hf.get("vision_feature_select_strategy", "default")],
        image_aspect_ratio="anyres" if next_ else "square",
        image_grid_pinpoints=hf.get("image_grid_pinpoints") if next_ else None,
        patch_merge_type="spatial_unpad" if next_ else "flat",
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def build(hf: dict, state_dict: dict, folder: Path):
    config = llava_config(hf)
    return VlmhubLlavaForConditionalGeneration(config), TABLE, _processor(folder, config)


def _processor(folder: Path, config: VlmhubLlavaConfig):
    from ...processing.llava import processor_from_transformers

    return processor_from_transformers(folder, config)
