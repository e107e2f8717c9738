"""CLIP (Radford et al.): a ViT image tower and a causal text tower projected into one embedding space."""

from transformers import PretrainedConfig

from .common import ACTIVATIONS, VisionTowerConfig

TEXT_POOLINGS = ("eos", "argmax")


class VlmhubCLIPVisionConfig(VisionTowerConfig):
    model_type = "vlmhub_clip_vision_model"

    patch_size: int = 32
    # Output width of visual_projection, kept here so a vision-only model with projection can be built alone.
    projection_dim: int = 512


class VlmhubCLIPTextConfig(PretrainedConfig):
    model_type = "vlmhub_clip_text_model"
    base_config_key = "text_config"

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    # Bias on the q/k/v projections (the text tower shares the vision tower's layer class).
    qkv_bias: bool = True
    k_bias: bool | None = None
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    # Which token's state is the sentence embedding: "eos" = the first eos_token_id, "argmax" = the highest id
    # (OpenAI's rule, right only because its end token is the largest id; old transformers checkpoints rely on it).
    pooling: str = "eos"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"pooling must be one of {TEXT_POOLINGS}, got {self.pooling!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.k_bias is None:
            self.k_bias = self.qkv_bias


class VlmhubCLIPConfig(PretrainedConfig):
    model_type = "vlmhub_clip"
    sub_configs_defaults = {"text_config": VlmhubCLIPTextConfig, "vision_config": VlmhubCLIPVisionConfig}

    text_config: dict | VlmhubCLIPTextConfig | None = None
    vision_config: dict | VlmhubCLIPVisionConfig | None = None
    # Width of the shared image-text embedding space.
    projection_dim: int = 512
    # Initial log temperature of the contrastive logits (log(1/0.07) as in the paper).
    logit_scale_init_value: float = 2.6592
    initializer_factor: float = 1.0
