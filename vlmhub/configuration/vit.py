"""ViT (Dosovitskiy et al.): the shared vision tower with a class-token pooler and a classification head."""

from .common import VisionTowerConfig


class VlmhubViTConfig(VisionTowerConfig):
    """Defaults of google/vit-base-patch16-224 (the transformers `vit` model type)."""

    model_type = "vlmhub_vit"
    base_config_key = ""

    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    patch_bias: bool = True
    pre_layernorm: bool = False
    post_layernorm: str = "all"
    # Width of the tanh pooler on the class token (transformers' ViTPooler); None means hidden_size.
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    # Whether VlmhubViTModel builds that pooler (transformers takes this as a constructor argument; we keep it in the
    # config too, so a converted headless checkpoint without a pooler reloads through AutoModel unchanged).
    add_pooling_layer: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.pooler_output_size is None:
            self.pooler_output_size = self.hidden_size
