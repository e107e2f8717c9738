"""Shared sub-configs: the vision tower every family builds from the one ViT in modeling/blocks/vit.py."""

from transformers import PretrainedConfig

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_pytorch_tanh", "gelu_new", "silu", "relu")
POST_NORMS = ("cls", "all", "none")


class VisionTowerConfig(PretrainedConfig):
    """One ViT, configurable for CLIP, timm/Google ViT, EVA and the towers of the VLM families."""

    model_type = "vlmhub_vision_tower"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    # CLIP and most VLM towers use quick_gelu; timm/Google ViT use exact gelu.
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    # Bias on the q/k/v projections (EVA: q and v only, see k_bias).
    qkv_bias: bool = True
    # EVA's attention has no key bias; everything else follows qkv_bias.
    k_bias: bool | None = None
    # OpenAI CLIP's conv1 has no bias; timm and transformers' ViT have one.
    patch_bias: bool = False
    # CLIP has a LayerNorm right after the embeddings (ln_pre); ViT does not.
    pre_layernorm: bool = True
    # Where the final LayerNorm goes: "cls" = on the pooled class token only (CLIP: last_hidden_state stays raw),
    # "all" = on every token (ViT/timm: last_hidden_state is normed), "none" = no final norm (LLaVA-style towers
    # that read a hidden layer).
    post_layernorm: str = "cls"
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.post_layernorm not in POST_NORMS:
            raise ValueError(f"post_layernorm must be one of {POST_NORMS}, got {self.post_layernorm!r}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.k_bias is None:
            self.k_bias = self.qkv_bias

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2
