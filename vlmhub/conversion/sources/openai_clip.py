"""OpenAI CLIP (github.com/openai/CLIP): the plain state dict `.pt` and the TorchScript `ViT-*.pt` archive."""

import re

import torch

from ...configuration.clip import VlmhubCLIPConfig
from ...modeling.clip import VlmhubCLIPModel
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import split_qkv, transpose


def resblock_rules(src: str, dst: str) -> list[Rule]:
    """OpenAI/open_clip residual blocks (nn.MultiheadAttention packed in_proj) -> our EncoderLayer."""
    block, layer = rf"{re.escape(src)}\.resblocks\.(\d+)\.", dst + ".layers.{0}."
    return [
        Rule(block + r"attn\.in_proj_weight", tuple(layer + f"self_attn.{p}_proj.weight" for p in "qkv"), split_qkv),
        Rule(block + r"attn\.in_proj_bias", tuple(layer + f"self_attn.{p}_proj.bias" for p in "qkv"), split_qkv),
        Rule(block + r"attn\.out_proj\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"ln_1\.(weight|bias)", layer + "layer_norm1.{1}"),
        Rule(block + r"ln_2\.(weight|bias)", layer + "layer_norm2.{1}"),
        Rule(block + r"mlp\.c_fc\.(weight|bias)", layer + "mlp.fc1.{1}"),
        Rule(block + r"mlp\.c_proj\.(weight|bias)", layer + "mlp.fc2.{1}"),
    ]


TABLE = [
    Rule(r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    Rule(r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    Rule(r"visual\.positional_embedding", "vision_model.embeddings.position_embedding"),
    Rule(r"visual\.ln_pre\.(weight|bias)", "vision_model.pre_layernorm.{0}"),
    *resblock_rules("visual.transformer", "vision_model.encoder"),
    Rule(r"visual\.ln_post\.(weight|bias)", "vision_model.post_layernorm.{0}"),
    Rule(r"visual\.proj", "visual_projection.weight", transpose),
    Rule(r"token_embedding\.weight", "text_model.embeddings.token_embedding.weight"),
    Rule(r"positional_embedding", "text_model.embeddings.position_embedding.weight"),
    *resblock_rules("transformer", "text_model.encoder"),
    Rule(r"ln_final\.(weight|bias)", "text_model.final_layer_norm.{0}"),
    Rule(r"text_projection", "text_projection.weight", transpose),
    Rule(r"logit_scale", "logit_scale"),
    Rule(r"input_resolution|context_length|vocab_size", None),  # TorchScript bookkeeping buffers
]


def config_from_state_dict(sd: dict[str, torch.Tensor]) -> VlmhubCLIPConfig:
    """OpenAI stores no config: every size comes from a shape; heads are width // 64 as in clip.model.build_model."""
    if "visual.conv1.weight" not in sd:
        if any(k.startswith("visual.layer1.") for k in sd):
            raise ConversionError("ResNet CLIP image towers (RN50, ...) are not supported; only ViT CLIP models are")
        raise ConversionError("Not an OpenAI CLIP checkpoint: visual.conv1.weight is missing")
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    return VlmhubCLIPConfig(
        projection_dim=sd["visual.proj"].shape[1],
        logit_scale_init_value=float(sd["logit_scale"]),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(sd, "visual.transformer"),
            num_attention_heads=width // 64,
            image_size=grid * patch,
            patch_size=patch,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            patch_bias=False,
            pre_layernorm=True,
            post_layernorm="cls",
            projection_dim=sd["visual.proj"].shape[1],
        ),
        text_config=dict(
            vocab_size=vocab,
            hidden_size=text_width,
            intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            num_hidden_layers=_count_blocks(sd, "transformer"),
            num_attention_heads=text_width // 64,
            max_position_embeddings=sd["positional_embedding"].shape[0],
            hidden_act="quick_gelu",
            projection_dim=sd["text_projection"].shape[1],
            # <|startoftext|> and <|endoftext|> are the last two ids; pooling is OpenAI's argmax; padding is id 0.
            bos_token_id=vocab - 2,
            eos_token_id=vocab - 1,
            pad_token_id=0,
            pooling="argmax",
        ),
    )


def _count_blocks(sd, prefix: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}\.resblocks\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in sd if (m := pattern.match(k)))


def convert(input_path, **options):
    sd = read_state_dict(input_path)
    config = config_from_state_dict(sd)
    model = load_into(VlmhubCLIPModel(config), sd, TABLE).eval()
    return model, _processor(config)


def _processor(config: VlmhubCLIPConfig):
    """OpenAI's preprocessing at the model's resolution; the BPE tokenizer when the vocabulary is OpenAI's."""
    from ...processing.clip import VlmhubCLIPImageProcessor, VlmhubCLIPProcessor
    from ...processing.tokenization import build_clip_tokenizer

    size = config.vision_config.image_size
    image_processor = VlmhubCLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if config.text_config.vocab_size != 49408:
        return image_processor  # a custom vocabulary: no tokenizer we can rebuild
    tokenizer = build_clip_tokenizer(model_max_length=config.text_config.max_position_embeddings)
    return VlmhubCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
