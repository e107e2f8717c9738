"""BLIP-2 (Li et al. 2023): a frozen EVA ViT, the Q-Former, a linear projection and any causal LM as soft prompt.

Three configs: the Q-Former (a BERT with learnable query tokens and cross-attention to the image), the stage-1
model (ViT + Q-Former + contrastive/matching/captioning heads) and the stage-2 generative model (+ language model).
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .common import ACTIVATIONS, VisionTowerConfig


class VlmhubBlip2VisionConfig(VisionTowerConfig):
    """EVA ViT-g as LAVIS builds it (39 of the 40 released blocks: BLIP-2 reads the penultimate layer)."""

    model_type = "vlmhub_blip2_vision_model"

    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    # EVA: q and v carry a bias, k does not.
    k_bias: bool | None = False
    patch_bias: bool = True
    pre_layernorm: bool = False
    # EVA's blocks end without a final norm; BLIP-2's own `ln_vision` (with its own eps) follows instead.
    post_layernorm: str = "none"
    initializer_range: float = 1e-10


class VlmhubQFormerConfig(PretrainedConfig):
    """The Q-Former: a post-norm BERT whose first `num_query_tokens` positions are learned queries."""

    model_type = "vlmhub_qformer"
    base_config_key = "qformer_config"

    # Vocabulary of the text path (BERT's 30522 + the [DEC] token in LAVIS stage 1).
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    # BERT's dropout after attention outputs / feed-forwards, and on the attention weights.
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # Text positions (queries get none).
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    # Cross-attention to the image every N layers (LAVIS `cross_attention_freq`), starting at layer 0 ...
    cross_attention_frequency: int = 2
    # ... or an explicit list of layer indices; derived from the frequency when None.
    cross_attention_layers: list[int] | None = None
    # Width of the image features the cross-attention reads (the ViT width).
    encoder_hidden_size: int = 1408
    # How many learned query tokens, i.e. how many soft-prompt vectors one image becomes.
    num_query_tokens: int = 32
    # Stage 1 keeps the text path (word/position embeddings and the text feed-forward); stage 2 drops it.
    use_text_input: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        if self.cross_attention_layers is None:
            if self.cross_attention_frequency < 1:
                raise ValueError(f"cross_attention_frequency must be >= 1, got {self.cross_attention_frequency}")
            self.cross_attention_layers = list(range(0, self.num_hidden_layers, self.cross_attention_frequency))
        bad = [i for i in self.cross_attention_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"cross_attention_layers {bad} are outside 0..{self.num_hidden_layers - 1}")
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")


class VlmhubBlip2Stage1Config(PretrainedConfig):
    """BLIP-2 stage 1 (representation learning): ViT + Q-Former with ITC, ITM and ITG heads."""

    model_type = "vlmhub_blip2_stage1"
    sub_configs_defaults = {"vision_config": VlmhubBlip2VisionConfig, "qformer_config": VlmhubQFormerConfig}

    vision_config: dict | VlmhubBlip2VisionConfig | None = None
    qformer_config: dict | VlmhubQFormerConfig | None = None
    # Eps of `ln_vision`, the LayerNorm on the ViT output (LAVIS: 1e-5; transformers reuses the ViT's eps).
    vision_layernorm_eps: float = 1e-5
    # Width of the contrastive embedding space (vision_proj / text_proj).
    image_text_hidden_size: int = 256
    # Initial contrastive temperature (LAVIS `temp`, learnable, clamped to [0.001, 0.5] in training).
    temperature_init_value: float = 0.07
    # The ITG head's decoder shares the Q-Former word embeddings (BERT's tie).
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.qformer_config.encoder_hidden_size != self.vision_config.hidden_size:
            self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size  # cross-attention reads the ViT

    @property
    def num_query_tokens(self) -> int:
        return self.qformer_config.num_query_tokens


class VlmhubBlip2Config(VlmhubBlip2Stage1Config):
    """BLIP-2 stage 2: the Q-Former's query outputs, projected, are the soft prompt of a causal language model."""

    model_type = "vlmhub_blip2"
    sub_configs_defaults = {
        "vision_config": VlmhubBlip2VisionConfig,
        "qformer_config": VlmhubQFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt"),
    }

    text_config: dict | PretrainedConfig | None = None
    # The vocabulary id that marks where the query outputs go (num_query_tokens of them per image).
    image_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        vocab = self.text_config.vocab_size
        if self.image_token_id is not None and not 0 <= self.image_token_id < vocab:
            raise ValueError(f"image_token_id {self.image_token_id} is outside the language model's vocabulary (0..{vocab - 1})")
