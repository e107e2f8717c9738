"""transformers' BLIP-2 (model_type `blip-2`, Blip2ForConditionalGeneration with a decoder-only LM) and BLIP (`blip`:
BlipForConditionalGeneration, BlipForImageTextRetrieval) -> vlmhub.

Keys as transformers saves them: vision_model.* (a fused `qkv` whose bias is cat(q_bias, 0, v_bias)),
query_tokens, qformer.{layernorm, encoder.layer.N.*}, language_projection.*, language_model.* (the LM's own layout,
which is also ours, so it maps one to one).
"""

import re
from pathlib import Path

import torch

from ...configuration.blip import VlmhubBlipConfig, VlmhubBlipTextConfig
from ...configuration.blip2 import VlmhubBlip2Config
from ...modeling.blip import VlmhubBlipForConditionalGeneration, VlmhubBlipForImageTextRetrieval
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


def vision_rules(k_bias: bool, dst: str = "vision.vision_model.", final_norm: str = "vision.ln_vision") -> list[Rule]:
    """transformers' BLIP / BLIP-2 ViT (fused qkv, `projection`) -> our ViT at `dst`; post_layernorm -> final_norm."""
    block, layer = r"vision_model\.encoder\.layers\.(\d+)\.", dst + "encoder.layers.{0}."
    qkv_bias = (tuple(layer + f"self_attn.{p}_proj.bias" for p in "qkv"), split_qkv) if k_bias else \
        (tuple(layer + f"self_attn.{p}_proj.bias" for p in "qv"), split_qv_bias)
    return [
        Rule(r"vision_model\.embeddings\.(class_embedding|position_embedding)", dst + "embeddings.{0}", squeeze_batch),
        Rule(r"vision_model\.embeddings\.patch_embedding\.(weight|bias)", dst + "embeddings.patch_embedding.{0}"),
        Rule(block + r"self_attn\.qkv\.weight", tuple(layer + f"self_attn.{p}_proj.weight" for p in "qkv"), split_qkv),
        Rule(block + r"self_attn\.qkv\.bias", *qkv_bias),
        Rule(block + r"self_attn\.projection\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"(layer_norm[12]|mlp\.fc[12])\.(weight|bias)", layer + "{1}.{2}"),
        Rule(r"vision_model\.post_layernorm\.(weight|bias)", final_norm + ".{0}"),
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
    fill_tied_lm_head(model, sd)
    return model, blip2_table(k_bias), _processor(folder, model.config)


def fill_tied_lm_head(model, sd: dict) -> None:
    """A tied LM saves no lm_head; our state dict lists it, so give it the input embeddings (in place)."""
    head = model.get_output_embeddings()
    if "language_model.lm_head.weight" in sd or head is None or head.weight is not model.get_input_embeddings().weight:
        return
    name = next(n for n, p in model.named_parameters() if p is head.weight)
    if name not in sd:
        raise ConversionError(f"the language model ties lm_head to {name}, which the checkpoint lacks")
    sd["language_model.lm_head.weight"] = sd[name]


def _processor(folder: Path, config):
    from ...processing.blip2 import processor_from_transformers

    return processor_from_transformers(folder, config)


def blip_processor(folder: Path):
    """Our BLIP processor for the folder's BlipProcessor files (None without them)."""
    from ...processing.blip import processor_from_transformers

    return processor_from_transformers(folder)


def blip_text_rules(src: str, dst: str) -> list[Rule]:
    """BERT with cross-attention in every layer (`{src}embeddings`, `{src}encoder.layer.N`) -> our BlipTextModel."""
    s = src.replace(".", r"\.")
    return [
        Rule(s + r"embeddings\.(word|position)_embeddings\.weight", dst + "{0}_embeddings.weight"),
        Rule(s + r"embeddings\.LayerNorm\.(weight|bias)", dst + "layernorm.{0}"),
        Rule(s + r"embeddings\.position_ids", None),
        *qformer_rules(src, dst, "self"),
    ]


def blip_config(hf: dict) -> VlmhubBlipConfig:
    vision, text = hf.get("vision_config") or {}, dict(hf.get("text_config") or {})
    vision_kwargs = {k: vision[k] for k in VISION_KEYS if k in vision and k != "qkv_bias"}
    text_kwargs = {k: v for k, v in text.items() if k in VlmhubBlipTextConfig.__annotations__ and v is not None}
    text_kwargs.setdefault("label_smoothing", hf.get("label_smoothing", 0.0))  # transformers' default: none
    return VlmhubBlipConfig(vision_config=vision_kwargs, text_config=text_kwargs,
                            image_text_hidden_size=hf.get("image_text_hidden_size", 256))


def build_blip(hf: dict, sd: dict, folder: Path):
    arch = (hf.get("architectures") or ["BlipForConditionalGeneration"])[0]
    vision = vision_rules(True, "vision_model.", "vision_model.post_layernorm")
    if arch == "BlipForConditionalGeneration":
        head = "text_decoder.cls.predictions."
        sd.setdefault(head + "decoder.weight", sd["text_decoder.bert.embeddings.word_embeddings.weight"])  # tied
        table = vision + blip_text_rules("text_decoder.bert.", "text_decoder.") + [
            Rule(re.escape(head) + r"transform\.dense\.(weight|bias)", "lm_head.dense.{0}"),
            Rule(re.escape(head) + r"transform\.LayerNorm\.(weight|bias)", "lm_head.norm.{0}"),
            Rule(re.escape(head) + r"decoder\.weight", "lm_head.decoder.weight"),
            Rule(re.escape(head) + r"bias", "lm_head.decoder.bias"),
            Rule(re.escape(head) + r"decoder\.bias", None),  # the same tensor as predictions.bias
        ]
        return VlmhubBlipForConditionalGeneration(blip_config(hf)), table, blip_processor(folder)
    if arch == "BlipForImageTextRetrieval":
        table = vision + blip_text_rules("text_encoder.", "text_encoder.") + [
            Rule(r"(vision_proj|text_proj|itm_head)\.(weight|bias)", "{0}.{1}")]
        return VlmhubBlipForImageTextRetrieval(blip_config(hf)), table, blip_processor(folder)
    raise ConversionError(f"transformers {arch} checkpoints are not supported; convert BlipForConditionalGeneration "
                          "or BlipForImageTextRetrieval")


def build(hf: dict, sd: dict, folder: Path):
    if hf.get("model_type") == "blip-2":
        return build_blip2(hf, sd, folder)
    return build_blip(hf, sd, folder)
