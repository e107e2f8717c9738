"""timm VisionTransformer (`.pth`) and the Google / big_vision Flax layout (`.npz`) of the original ViT release."""

import re

import torch

from ...configuration.vit import VlmhubViTConfig
from ...modeling.vit import VlmhubViTForImageClassification, VlmhubViTModel
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import conv_hwio_to_oihw, flatten, flax_heads_in, flax_heads_out, split_qkv, squeeze_batch, transpose

EMB, ENC = "{p}vision_model.embeddings.", "{p}vision_model.encoder.layers.{{0}}."


def _timm_table(p: str) -> list[Rule]:
    emb, layer = EMB.format(p=p), ENC.format(p=p)
    block = r"blocks\.(\d+)\."
    return [
        Rule(r"cls_token", emb + "class_embedding", squeeze_batch),
        Rule(r"pos_embed", emb + "position_embedding", squeeze_batch),
        Rule(r"patch_embed\.proj\.(weight|bias)", emb + "patch_embedding.{0}"),
        Rule(block + r"norm1\.(weight|bias)", layer + "layer_norm1.{1}"),
        Rule(block + r"attn\.qkv\.weight", tuple(layer + f"self_attn.{x}_proj.weight" for x in "qkv"), split_qkv),
        Rule(block + r"attn\.qkv\.bias", tuple(layer + f"self_attn.{x}_proj.bias" for x in "qkv"), split_qkv),
        Rule(block + r"attn\.proj\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"norm2\.(weight|bias)", layer + "layer_norm2.{1}"),
        Rule(block + r"mlp\.(fc1|fc2)\.(weight|bias)", layer + "mlp.{1}.{2}"),
        Rule(r"norm\.(weight|bias)", p + "vision_model.post_layernorm.{0}"),
        Rule(r"head\.(weight|bias)", "classifier.{0}"),
    ]


def _npz_table(p: str) -> list[Rule]:
    emb, layer = EMB.format(p=p), ENC.format(p=p)
    block, attn = r"Transformer/encoderblock_(\d+)/", r"Transformer/encoderblock_(\d+)/MultiHeadDotProductAttention_1/"
    rules = [
        Rule(r"cls", emb + "class_embedding", squeeze_batch),
        Rule(r"Transformer/posembed_input/pos_embedding", emb + "position_embedding", squeeze_batch),
        Rule(r"embedding/kernel", emb + "patch_embedding.weight", conv_hwio_to_oihw),
        Rule(r"embedding/bias", emb + "patch_embedding.bias"),
        Rule(block + r"LayerNorm_0/scale", layer + "layer_norm1.weight"),
        Rule(block + r"LayerNorm_0/bias", layer + "layer_norm1.bias"),
        Rule(attn + r"out/kernel", layer + "self_attn.o_proj.weight", flax_heads_out),
        Rule(attn + r"out/bias", layer + "self_attn.o_proj.bias"),
        Rule(block + r"LayerNorm_2/scale", layer + "layer_norm2.weight"),
        Rule(block + r"LayerNorm_2/bias", layer + "layer_norm2.bias"),
        Rule(block + r"MlpBlock_3/Dense_0/kernel", layer + "mlp.fc1.weight", transpose),
        Rule(block + r"MlpBlock_3/Dense_0/bias", layer + "mlp.fc1.bias"),
        Rule(block + r"MlpBlock_3/Dense_1/kernel", layer + "mlp.fc2.weight", transpose),
        Rule(block + r"MlpBlock_3/Dense_1/bias", layer + "mlp.fc2.bias"),
        Rule(r"Transformer/encoder_norm/scale", p + "vision_model.post_layernorm.weight"),
        Rule(r"Transformer/encoder_norm/bias", p + "vision_model.post_layernorm.bias"),
        Rule(r"head/kernel", "classifier.weight", transpose),
        Rule(r"head/bias", "classifier.bias"),
    ]
    for flax, ours in (("query", "q"), ("key", "k"), ("value", "v")):
        rules.append(Rule(attn + flax + "/kernel", layer + f"self_attn.{ours}_proj.weight", flax_heads_in))
        rules.append(Rule(attn + flax + "/bias", layer + f"self_attn.{ours}_proj.bias", flatten))
    return rules


# timm's names for its ViT sizes; the .pth does not store the head count, the .npz does.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def config_from_state_dict(sd, is_npz: bool, num_attention_heads: int | None) -> VlmhubViTConfig:
    pos = sd["Transformer/posembed_input/pos_embedding" if is_npz else "pos_embed"]
    patch_weight = sd["embedding/kernel" if is_npz else "patch_embed.proj.weight"]
    width, patch = pos.shape[-1], (patch_weight.shape[0] if is_npz else patch_weight.shape[-1])
    grid = round((pos.shape[-2] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[-2]:
        raise ConversionError(f"pos_embed has {pos.shape[-2]} rows: expected a class token plus a square patch grid")
    if is_npz:
        stored = sd["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape[1]
        if num_attention_heads not in (None, stored):
            raise ConversionError(f"--num-attention-heads {num_attention_heads} contradicts the checkpoint's {stored}")
        num_attention_heads = stored
    elif num_attention_heads is None:
        if width not in HEADS_BY_WIDTH:
            raise ConversionError(f"timm .pth files do not store the head count; pass --num-attention-heads (width {width})")
        num_attention_heads = HEADS_BY_WIDTH[width]
    mlp = sd["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"].shape[1] if is_npz else sd["blocks.0.mlp.fc1.weight"].shape[0]
    head = sd.get("head/kernel" if is_npz else "head.weight")
    num_labels = 0 if head is None else head.shape[1 if is_npz else 0]
    return VlmhubViTConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=_count_blocks(sd, r"Transformer/encoderblock_(\d+)/" if is_npz else r"blocks\.(\d+)\."),
        num_attention_heads=num_attention_heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        num_labels=max(num_labels, 1),
        add_pooling_layer=False,  # timm's token pooling has no tanh pooler
    ), num_labels > 0


def _count_blocks(sd, pattern: str) -> int:
    regex = re.compile(pattern)
    return 1 + max(int(m.group(1)) for k in sd if (m := regex.match(k)))


def convert(input_path, num_attention_heads: int | None = None, **options):
    sd = read_state_dict(input_path)
    is_npz = "cls" in sd
    if not is_npz and "pos_embed" not in sd:
        raise ConversionError(f"{input_path} is neither a timm ViT state dict (pos_embed) nor a Google ViT .npz (cls)")
    config, has_head = config_from_state_dict(sd, is_npz, num_attention_heads)
    model = VlmhubViTForImageClassification(config) if has_head else VlmhubViTModel(config)
    table = (_npz_table if is_npz else _timm_table)("vit." if has_head else "")
    load_into(model, sd, table)
    return model.eval(), _image_processor(config)


def _image_processor(config: VlmhubViTConfig):
    """timm's default ViT eval transform at the checkpoint's size: resize, center crop, mean = std = 0.5."""
    from ...processing.vit import VlmhubViTImageProcessor

    return VlmhubViTImageProcessor(size={"height": config.image_size, "width": config.image_size})
