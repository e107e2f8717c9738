"""BLIP (Li et al. 2022): a ViT and a BERT used three ways (unimodal encoder, image-grounded encoder with
cross-attention, image-grounded causal decoder) for contrastive, matching and captioning objectives."""

from transformers import PretrainedConfig

from .common import ACTIVATIONS, VisionTowerConfig


class VlmhubBlipVisionConfig(VisionTowerConfig):
    """BLIP's ViT-B/16 at 384 px: timm layout (patch bias, full qkv bias, final norm on every token)."""

    model_type = "vlmhub_blip_vision_model"

    image_size: int = 384
    patch_size: int = 16
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    patch_bias: bool = True
    pre_layernorm: bool = False
    post_layernorm: str = "all"
    initializer_range: float = 1e-10


class VlmhubBlipTextConfig(PretrainedConfig):
    """The BERT of BLIP: every layer has cross-attention to the image, used in the image-grounded modes."""

    model_type = "vlmhub_blip_text_model"
    base_config_key = "text_config"

    # bert-base-uncased's 30522 + [DEC] (30522) and [ENC] (30523).
    vocab_size: int = 30524
    hidden_size: int = 768
    # Width of the image features the cross-attention reads (the ViT width).
    encoder_hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    # [DEC]: the first token of every caption the decoder writes.
    bos_token_id: int | None = 30522
    eos_token_id: int | None = 2
    pad_token_id: int | None = 0
    # [SEP]: where captioning stops.
    sep_token_id: int | None = 102
    # Label smoothing of the captioning (LM) loss; 0.1 in the paper.
    label_smoothing: float = 0.1
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")


class VlmhubBlipConfig(PretrainedConfig):
    model_type = "vlmhub_blip"
    sub_configs_defaults = {"text_config": VlmhubBlipTextConfig, "vision_config": VlmhubBlipVisionConfig}

    text_config: dict | VlmhubBlipTextConfig | None = None
    vision_config: dict | VlmhubBlipVisionConfig | None = None
    # Width of the contrastive space (vision_proj / text_proj).
    image_text_hidden_size: int = 256
    # The captioning head's decoder shares the word embeddings.
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size
