"""transformers' BLIP-2 (model_type `blip-2`, Blip2ForConditionalGeneration with a decoder-only LM) -> vlmhub.

Keys as transformers saves them: vision_model.* (a fused `qkv` whose bias is cat(q_bias, 0, v_bias)),
query_tokens, qformer.{layernorm, encoder.layer.N.*}, language_projection.*, language_model.* (the LM's own layout,
which is also ours, so it maps one to one).
"""

from pathlib import Path

import torch

from ...configuration.blip2 import VlmhubBlip2Config
from ...modeling.blip2 import VlmhubBlip2ForConditionalGeneration
from ..engine import ConversionError, Rule
from ..transforms import split_qkv, squeeze_batch

VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
               "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias", "attention_dropout")
QFORMER_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                "layer_norm_eps", "pad_token_id", "cross_attention_frequency", "initializer_range")


def split_qv_bias(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cat(q_bias, zeros, v_bias) -> q_bias, v_bias (EVA has no key bias)."""
    q, _, v = t.chunk(3)
    return q.contiguous(), v.contiguous()


def qformer_rules(src: str, dst: str, self_name: str) -> list[Rule]:
    """BERT Q-Former layers (`{src}encoder.layer.N.`) -> our QFormerLayers (`{dst}layers.N.`).

    self_name: what the q/k/v projections sit under (`attention` in transformers, `self` in LAVIS)."""
    block, layer = src.replace(".", r"\.") + r"encoder\.layer\.(\d+)\.", dst + "layers.{0}."
    rules = []
    for theirs, ours in (("attention", "self_attn"), ("crossattention", "cross_attn")):
        for proj, p in (("query", "q"), ("key", "k"), ("value", "v")):
            rules.append(Rule(block + rf"{theirs}\.{self_name}\.{proj}\.(weight|bias)", layer + f"{ours}.{p}_proj.{{1}}"))
        rules.append(Rule(block + rf"{theirs}\.output\.dense\.(weight|bias)", layer + f"{ours}.o_proj.{{1}}"))
        rules.append(Rule(block + rf"{theirs}\.output\.LayerNorm\.(weight|bias)", layer + f"{ours}_norm.{{1}}"))
    for suffix, ours in (("_query", "query_mlp"), ("", "mlp")):
        rules += [
            Rule(block + rf"intermediate{suffix}\.dense\.(weight|bias)", layer + f"{ours}.fc1.{{1}}"),
            Rule(block + rf"output{suffix}\.dense\.(weight|bias)", layer + f"{ours}.fc2.{{1}}"),
            Rule(block + rf"output{suffix}\.LayerNorm\.(weight|bias)", layer + f"{ours}_norm.{{1}}"),
        ]
    return rules


def vision_rules(k_bias: bool) -> list[Rule]:
    block, layer = r"vision_model\.encoder\.layers\.(\d+)\.", "vision.vision_model.encoder.layers.{0}."
    qkv_bias = (tuple(layer + f"self_attn.{p}_proj.bias" for p in "qkv"), split_qkv) if k_bias else \
        (tuple(layer + f"self_attn.{p}_proj.bias" for p in "qv"), split_qv_bias)
    return [
        Rule(r"vision_model\.embeddings\.(class_embedding|position_embedding)", "vision.vision_model.embeddings.{0}",
             squeeze_batch),
        Rule(r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", "vision.vision_model.embeddings.patch_embedding.{0}"),
        Rule(block + r"self_attn\.qkv\.weight", tuple(layer + f"self_attn.{p}_proj.weight" for p in "qkv"), split_qkv),
        Rule(block + r"self_attn\.qkv\.bias", *qkv_bias),
        Rule(block + r"self_attn\.projection\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"(layer_norm[12]|mlp\.fc[12])\.(weight|bias)", layer + "{1}.{2}"),
        Rule(r"vision_model\.post_layernorm\.(weight|bias)", "vision.ln_vision.{0}"),
    ]


def blip2_table(k_bias: bool) -> list[Rule]:
    return [
        *vision_rules(k_bias),
        Rule(r"query_tokens", "qformer.query_tokens"),
        Rule(r"qformer\.layernorm\.(weight|bias)", "qformer.layernorm.{0}"),
        *qformer_rules("qformer.", "qformer.", "attention"),
        Rule(r"language_projection\.(weight|bias)", "language_projection.{0}"),
        Rule(r"language_model\.(.+)", "language_model.{0}"),
    ]


def blip2_config(hf: dict, k_bias: bool) -> VlmhubBlip2Config:
    vision, qformer = hf.get("vision_config") or {}, hf.get("qformer_config") or {}
    vision_kwargs = {k: vision[k] for k in VISION_KEYS if k in vision}
    # transformers' ViT has a plain patch conv and a final norm on every token: our ln_vision with the ViT's eps.
    vision_kwargs |= dict(k_bias=k_bias and vision.get("qkv_bias", True), patch_bias=True, pre_layernorm=False,
                          post_layernorm="none")
    qformer_kwargs = {k: qformer[k] for k in QFORMER_KEYS if k in qformer}
    qformer_kwargs |= dict(num_query_tokens=hf.get("num_query_tokens", 32),
                           use_text_input=qformer.get("use_qformer_text_input", False))
    text = {k: v for k, v in (hf.get("text_config") or {}).items() if k not in ("transformers_version", "architectures")}
    return VlmhubBlip2Config(vision_config=vision_kwargs, qformer_config=qformer_kwargs, text_config=text,
                             image_token_id=hf.get("image_token_index", hf.get("image_token_id")),
                             vision_layernorm_eps=vision.get("layer_norm_eps", 1e-6),
                             image_text_hidden_size=hf.get("image_text_hidden_size", 256))


def build_blip2(hf: dict, sd: dict, folder: Path):
    arch = (hf.get("architectures") or ["Blip2ForConditionalGeneration"])[0]
    if arch != "Blip2ForConditionalGeneration":
        raise ConversionError(f"transformers {arch} checkpoints are not supported; convert a Blip2ForConditionalGeneration")
    if (hf.get("text_config") or {}).get("is_encoder_decoder") or hf.get("use_decoder_only_language_model") is False:
        raise ConversionError("BLIP-2 with an encoder-decoder language model (Flan-T5) is not supported; only causal LMs")
    biases = [t for k, t in sd.items() if k.endswith("self_attn.qkv.bias")]
    k_bias = any(bool(b.chunk(3)[1].any()) for b in biases)  # EVA's key bias is zero; keep it only if it is not
    model = VlmhubBlip2ForConditionalGeneration(blip2_config(hf, k_bias))
    return model, blip2_table(k_bias), _processor(folder, model.config)


def _processor(folder: Path, config):
    from ...processing.blip2 import processor_from_transformers

    return processor_from_transformers(folder, config)


def build(hf: dict, sd: dict, folder: Path):
    if hf.get("model_type") == "blip-2":
        return build_blip2(hf, sd, folder)
    raise ConversionError(f"transformers model_type {hf.get('model_type')!r}: BLIP v1 conversion is not implemented yet")
