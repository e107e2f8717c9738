"""mPLUG-Owl (Ye et al. 2023): a CLIP-style ViT, the visual abstractor (learned queries) and any causal LM.

Three configs: the vision tower (the shared ViT with mPLUG-Owl's settings), the abstractor, and the whole model.
Defaults are those of the released mplug-owl-llama-7b.
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .common import VisionTowerConfig


class VlmhubMplugOwlVisionConfig(VisionTowerConfig):
    """ViT-L/14 at 224 px: bias-free patches, ln_pre, and the final LayerNorm on every token (the abstractor reads
    the normed last_hidden_state, class token included)."""

    model_type = "vlmhub_mplug_owl_vision_model"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    patch_bias: bool = False
    pre_layernorm: bool = True
    post_layernorm: str = "all"


class VlmhubMplugOwlAbstractorConfig(PretrainedConfig):
    """The visual abstractor: `num_query_tokens` learned queries, each layer attending to [queries; patches]."""

    model_type = "vlmhub_mplug_owl_abstractor"
    base_config_key = "abstractor_config"

    hidden_size: int = 1024
    num_hidden_layers: int = 6
    num_attention_heads: int = 16
    # Width of the SwiGLU feed-forward (w1, w3 out; w2 in).
    intermediate_size: int = 2816
    # How many learned queries; each image becomes num_query_tokens + 1 (vit_eos) language-model tokens.
    num_query_tokens: int = 64
    # Dropout on the attention weights (the original's attention_probs_dropout_prob); inactive in eval.
    attention_dropout: float = 0.1
    # eps of ffn_ln, the LayerNorm inside the feed-forward (the original's config layer_norm_eps).
    layer_norm_eps: float = 1e-6
    # eps of norm1 / normk / norm2: the original builds them with LayerNorm's default, not the config's eps.
    norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")


class VlmhubMplugOwlConfig(PretrainedConfig):
    model_type = "vlmhub_mplug_owl"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": VlmhubMplugOwlVisionConfig,
        "abstractor_config": VlmhubMplugOwlAbstractorConfig,
        # LLaMA-7B with one more row for <image> (what the converter produces).
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=dict(vocab_size=32001)),
    }

    vision_config: dict | VlmhubMplugOwlVisionConfig | None = None
    abstractor_config: dict | VlmhubMplugOwlAbstractorConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    # A real vocabulary id marking where the abstractor's tokens go (the original's sentinel -1 is converted to it).
    image_token_id: int = 32000
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        vision, abstractor = self.vision_config.hidden_size, self.abstractor_config.hidden_size
        if vision != abstractor:
            raise ValueError(f"The abstractor attends over [queries; patches], so its hidden_size ({abstractor}) must "
                             f"equal the vision tower's ({vision})")
        vocab = self.text_config.vocab_size
        if not 0 <= self.image_token_id < vocab:
            raise ValueError(f"image_token_id {self.image_token_id} is outside the language model's vocabulary (0..{vocab - 1})")

    @property
    def num_image_tokens(self) -> int:
        """Language-model tokens per image: the queries plus vit_eos."""
        return self.abstractor_config.num_query_tokens + 1
