"""transformers' MllamaForConditionalGeneration folders (model_type `mllama`) -> VlmhubMllamaForConditionalGeneration.

Keys are those of the SAVED files (`language_model.model.*`, `language_model.lm_head.*`, `vision_model.*`,
`multi_modal_projector.*`), not transformers' in-memory names. What changes on the way:

- The text stack: transformers numbers self- and cross-attention layers together (`layers.0..39`); ours keeps the
  self-attention layers in a plain Llama (`layers.0..31`) and puts each cross-attention layer in front of the
  self-attention layer that follows it (`layers.s.gated_cross_attn.*`, `layers.s.decoder_layer.*`).
- `embed_tokens` has vocab_size + 8 rows; the 8 past the vocabulary become `learnable_embedding` (Meta's table).
- transformers >= 5 concatenates the OUTPUT of vision layers `intermediate_layers_indices`; ours (and Meta's) the
  INPUT, so the indices are shifted by one.
- transformers' cross-attention zeroes only its MLP for text before the first image (Meta also zeroes the
  attention): the converted config sets mask_cross_attention_rows=False to give transformers' numbers exactly.
"""

from pathlib import Path

import torch

from ...configuration.mllama import VlmhubMllamaConfig
from ...modeling.mllama import VlmhubMllamaForConditionalGeneration
from ..engine import ConversionError, Rule

TEXT_KEYS = ("vocab_size", "hidden_size", "hidden_act", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "rope_parameters", "rms_norm_eps", "max_position_embeddings", "initializer_range",
             "use_cache", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
VISION_KEYS = ("hidden_size", "hidden_act", "num_hidden_layers", "num_global_layers", "num_channels",
               "intermediate_size", "vision_output_dim", "image_size", "patch_size", "max_num_tiles",
               "supported_aspect_ratios", "initializer_range")


def mllama_config(hf: dict) -> VlmhubMllamaConfig:
    text, vision = hf.get("text_config") or {}, hf.get("vision_config") or {}
    cross = sorted(text.get("cross_attention_layers") or [3, 8, 13, 18, 23, 28, 33, 38])
    text_kwargs = {k: text[k] for k in TEXT_KEYS if k in text}
    text_kwargs |= dict(model_type="llama", num_hidden_layers=text.get("num_hidden_layers", 40) - len(cross),
                        attention_dropout=text.get("dropout", 0.0))
    vision_kwargs = {k: vision[k] for k in VISION_KEYS if k in vision}
    layers = vision.get("intermediate_layers_indices") or [3, 7, 15, 23, 30]
    vision_kwargs |= dict(num_attention_heads=vision.get("attention_heads", 16),
                          layer_norm_eps=vision.get("norm_eps", 1e-5),
                          intermediate_layers_indices=[i + 1 for i in layers])  # output of i = input of i + 1
    return VlmhubMllamaConfig(text_config=text_kwargs, vision_config=vision_kwargs, cross_attention_layers=cross,
                              image_token_index=hf.get("image_token_index", 128256), mask_cross_attention_rows=False)


def split_learnable(vocab_size: int):
    def split(t: torch.Tensor):
        """(vocab + 8, D) -> the vocabulary rows, the learnable rows."""
        return t[:vocab_size].contiguous(), t[vocab_size:].contiguous()

    return split


def text_rules(config: VlmhubMllamaConfig) -> list[Rule]:
    """One rule set per transformers layer index: self layers move to their Llama index, cross layers in front."""
    cross, targets = config.cross_attention_layers, config.cross_attention_targets()
    src, dst = r"language_model\.model\.layers\.", "language_model.model.layers."
    total = config.text_config.num_hidden_layers + len(cross)
    rules = []
    for p in range(total):
        if p in cross:
            to = f"{dst}{targets[cross.index(p)]}.gated_cross_attn."
            rules += [Rule(rf"{src}{p}\.cross_attn_attn_gate", to + "attn_gate"),
                      Rule(rf"{src}{p}\.cross_attn_mlp_gate", to + "mlp_gate"),
                      Rule(rf"{src}{p}\.(.+)", to + "{0}")]
        else:
            s = p - sum(c < p for c in cross)
            wrapped = s in targets
            rules.append(Rule(rf"{src}{p}\.(.+)", f"{dst}{s}." + ("decoder_layer." if wrapped else "") + "{0}"))
    vocab = config.text_config.vocab_size
    return rules + [
        Rule(r"language_model\.model\.embed_tokens\.weight",
             ("language_model.model.embed_tokens.weight", "learnable_embedding.weight"), split_learnable(vocab)),
        Rule(r"language_model\.model\.norm\.weight", "language_model.model.norm.weight"),
        Rule(r"language_model\.lm_head\.weight", "language_model.lm_head.weight"),
    ]


def vision_rules() -> list[Rule]:
    v = "vision_model."
    rules = [
        Rule(r"vision_model\.gated_positional_embedding\.(embedding|gate|tile_embedding\.weight)",
             v + "position_embedding.{0}"),
        Rule(r"vision_model\.(pre|post)_tile_positional_embedding\.(embedding\.weight|gate)",
             v + "{0}_tile_embedding.{1}"),
        Rule(r"vision_model\.layernorm_(pre|post)\.(weight|bias)", v + "{0}_layernorm.{1}"),
        Rule(r"vision_model\.(patch_embedding\.weight|class_embedding)", v + "{0}"),
        Rule(r"multi_modal_projector\.(weight|bias)", "multi_modal_projector.{0}"),
    ]
    for theirs, ours in (("transformer", "encoder"), ("global_transformer", "global_encoder")):
        block, layer = rf"vision_model\.{theirs}\.layers\.(\d+)\.", f"vision_model.{ours}.layers.{{0}}."
        rules += [
            Rule(block + r"input_layernorm\.(weight|bias)", layer + "layer_norm1.{1}"),
            Rule(block + r"post_attention_layernorm\.(weight|bias)", layer + "layer_norm2.{1}"),
            Rule(block + r"(self_attn\.[qkvo]_proj\.weight|mlp\.fc[12]\.(?:weight|bias)|gate_attn|gate_ffn)",
                 layer + "{1}"),
        ]
    return rules


def build(hf: dict, state_dict: dict, folder: Path):
    arch = (hf.get("architectures") or ["MllamaForConditionalGeneration"])[0]
    if arch != "MllamaForConditionalGeneration":
        raise ConversionError(f"transformers {arch} checkpoints are not supported; convert a full "
                              "MllamaForConditionalGeneration")
    config = mllama_config(hf)
    model = VlmhubMllamaForConditionalGeneration(config)
    return model, text_rules(config) + vision_rules(), processor_from_folder(folder)


def processor_from_folder(folder: Path):
    """Our image processor with the folder's settings, and our processor with its tokenizer and chat template when it
    has them; None without preprocessing files."""
    if not any((folder / name).exists() for name in ("preprocessor_config.json", "processor_config.json")):
        return None
    from transformers import AutoProcessor

    from ...processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor

    theirs = AutoProcessor.from_pretrained(folder)  # transformers' MllamaProcessor, or its image processor alone
    settings = getattr(theirs, "image_processor", theirs).to_dict()
    accepted = set(VlmhubMllamaImageProcessor().to_dict())
    image_processor = VlmhubMllamaImageProcessor(**{k: v for k, v in settings.items()
                                                    if k in accepted and not k.startswith("_")})
    tokenizer = getattr(theirs, "tokenizer", None)
    if tokenizer is None:
        return image_processor
    template = getattr(theirs, "chat_template", None)
    return VlmhubMllamaProcessor(image_processor, tokenizer, **({"chat_template": template} if template else {}))
