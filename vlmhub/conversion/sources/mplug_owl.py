"""The original mPLUG-Owl release (X-PLUG/mPLUG-Owl, e.g. MAGAer13/mplug-owl-llama-7b): an HF-style folder with
`model_type "mplug-owl"`, nested vision / visual_abstractor / text configs, `query_tokens`, `vision_model.*`,
`abstractor.*` and `language_model.*` (a LlamaForCausalLM), plus its tokenizer and CLIP preprocessing.

Differences we convert on purpose:
- the vision attention's fused `query_key_value` is laid out per head (heads, 3, head_dim): split into q/k/v;
- `rotary_emb.inv_freq` buffers of old transformers' Llama are dropped (recomputed from the config);
- the original marks images with the sentinel id -1; we add a real `<image>` token at id = vocab_size (one more
  embedding and lm_head row, the mean of the others) and suppress it in generation, so text logits and greedy
  outputs stay those of the original.
"""

import functools
import json
from pathlib import Path

from transformers import CONFIG_MAPPING, GenerationConfig

from ...configuration.mplug_owl import VlmhubMplugOwlConfig
from ...modeling.mplug_owl import VlmhubMplugOwlForConditionalGeneration
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import append_mean_row, split_qkv_per_head, squeeze_batch

VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
               "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "num_channels", "initializer_range")
ABSTRACTOR_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "layer_norm_eps",
                   "initializer_range")
# Fields of a transformers-4.28 sub-config that are generation or bookkeeping settings, not the LM's architecture.
NOT_TEXT = {"_name_or_path", "architectures", "transformers_version", "torch_dtype", "_commit_hash", "model_type",
            "id2label", "label2id"}


def table(vision_heads: int) -> list[Rule]:
    vit, layer = r"vision_model\.", r"vision_model\.encoder\.layers\.(\d+)\."
    ours = "vision_model.encoder.layers.{0}."
    block, dst = r"abstractor\.encoder\.layers\.(\d+)\.crossattention\.", "abstractor.layers.{0}."
    qkv = tuple(ours + f"self_attn.{p}_proj.{{1}}" for p in "qkv")
    return [
        Rule(r"query_tokens", "abstractor.query_tokens"),
        Rule(vit + r"embeddings\.cls_token", "vision_model.embeddings.class_embedding", squeeze_batch),
        Rule(vit + r"embeddings\.position_embedding", "vision_model.embeddings.position_embedding", squeeze_batch),
        Rule(vit + r"embeddings\.patch_embed\.weight", "vision_model.embeddings.patch_embedding.weight"),
        Rule(vit + r"embeddings\.pre_layernorm\.(weight|bias)", "vision_model.pre_layernorm.{0}"),
        Rule(layer + r"self_attn\.query_key_value\.(weight|bias)", qkv, functools.partial(split_qkv_per_head, num_heads=vision_heads)),
        Rule(layer + r"self_attn\.dense\.(weight|bias)", ours + "self_attn.o_proj.{1}"),
        Rule(layer + r"input_layernorm\.(weight|bias)", ours + "layer_norm1.{1}"),
        Rule(layer + r"post_attention_layernorm\.(weight|bias)", ours + "layer_norm2.{1}"),
        Rule(layer + r"mlp\.(fc[12])\.(weight|bias)", ours + "mlp.{1}.{2}"),
        Rule(vit + r"post_layernorm\.(weight|bias)", "vision_model.post_layernorm.{0}"),
        *[Rule(block + rf"attention\.{theirs}\.(weight|bias)", dst + f"attention.{p}_proj.{{1}}")
          for theirs, p in (("query", "q"), ("key", "k"), ("value", "v"))],
        Rule(block + r"output\.out_proj\.(weight|bias)", dst + "attention.o_proj.{1}"),
        Rule(block + r"output\.norm2\.(weight|bias)", dst + "norm2.{1}"),
        Rule(block + r"output\.mlp\.(w[123]|ffn_ln)\.(weight|bias)", dst + "mlp.{1}.{2}"),
        Rule(block + r"(norm1|normk)\.(weight|bias)", dst + "{1}.{2}"),
        Rule(r"abstractor\.(visual_fc\.(?:weight|bias)|vit_eos)", "abstractor.{0}"),
        Rule(r"language_model\.model\.embed_tokens\.weight", "language_model.model.embed_tokens.weight", append_mean_row),
        Rule(r"language_model\.lm_head\.weight", "language_model.lm_head.weight", append_mean_row),
        Rule(r".*rotary_emb\.inv_freq", None),
        Rule(r"language_model\.(model\..*)", "language_model.{0}"),
    ]


def mplug_owl_config(raw: dict) -> VlmhubMplugOwlConfig:
    for key in ("vision_config", "visual_abstractor_config", "text_config"):
        if key not in raw:
            raise ConversionError(f"config.json has no {key}: not an mPLUG-Owl (v1) checkpoint")
    vision = {k: raw["vision_config"][k] for k in VISION_KEYS if k in raw["vision_config"]}
    abstractor = {k: raw["visual_abstractor_config"][k] for k in ABSTRACTOR_KEYS if k in raw["visual_abstractor_config"]}
    abstractor["attention_dropout"] = raw["visual_abstractor_config"].get("attention_probs_dropout_prob", 0.1)
    abstractor["num_query_tokens"] = raw.get("num_query_tokens", 64)
    text_raw = raw["text_config"]
    model_type = text_raw.get("model_type", "llama")
    text = {k: v for k, v in text_raw.items() if k not in NOT_TEXT}
    text["vocab_size"] = text_raw["vocab_size"] + 1  # room for <image>
    return VlmhubMplugOwlConfig(
        vision_config=vision,
        abstractor_config=abstractor,
        text_config=CONFIG_MAPPING[model_type](**text).to_dict() | {"model_type": model_type},
        image_token_id=text_raw["vocab_size"],
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
    )


def convert(input_path, **options):
    folder = Path(input_path)
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") != "mplug-owl":
        raise ConversionError(f"{folder}/config.json has model_type {raw.get('model_type')!r}, expected 'mplug-owl'")
    config = mplug_owl_config(raw)
    state = read_state_dict(folder)
    model = VlmhubMplugOwlForConditionalGeneration(config)
    model = load_into(model, state, table(config.vision_config.num_attention_heads)).eval()
    model.generation_config = GenerationConfig.from_model_config(config.text_config)
    model.generation_config.suppress_tokens = [config.image_token_id]  # the original cannot emit it
    return model, _processor(folder, config)


def _processor(folder: Path, config: VlmhubMplugOwlConfig):
    from ...processing.mplug_owl import processor_from_mplug_owl

    if not (folder / "tokenizer_config.json").exists():
        return None
    return processor_from_mplug_owl(folder, config)
