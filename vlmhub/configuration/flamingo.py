"""Flamingo (Alayrac et al. 2022) as released by OpenFlamingo: an open_clip ViT, a Perceiver resampler, and gated
cross-attention blocks inserted in front of every N-th decoder layer of any causal language model.

Defaults are OpenFlamingo-9B v1's (OpenAI ViT-L/14 at 224 px, LLaMA-7B, cross-attention every 4 layers); the
perceiver and cross-attention sizes are the ones open_flamingo hard-codes.
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .common import VisionTowerConfig


class VlmhubFlamingoVisionConfig(VisionTowerConfig):
    """OpenAI/open_clip ViT-L/14: bias-free patches, ln_pre, ln_post kept for the pooled token (Flamingo reads the
    patch tokens of the last layer; see VlmhubFlamingoConfig.patch_tokens_ln_post)."""

    model_type = "vlmhub_flamingo_vision_model"

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    patch_size: int = 14
    post_layernorm: str = "cls"


# LLaMA-7B with open_flamingo's three added tokens: <|endofchunk|> 32000, <image> 32001, <PAD> 32002.
LLAMA_7B_TEXT = dict(vocab_size=32003, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, rms_norm_eps=1e-6, tie_word_embeddings=False)


class VlmhubFlamingoConfig(PretrainedConfig):
    model_type = "vlmhub_flamingo"
    attribute_map = {"image_token_id": "media_token_id", "image_token_index": "media_token_id"}
    sub_configs_defaults = {
        "vision_config": VlmhubFlamingoVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=LLAMA_7B_TEXT),
    }

    vision_config: dict | VlmhubFlamingoVisionConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    # A cross-attention block runs before decoder layer i iff (i + 1) % cross_attn_every_n_layers == 0.
    cross_attn_every_n_layers: int = 4
    # Cross-attention heads and their width (open_flamingo hard-codes 8 x 64, whatever the LM's hidden size).
    cross_attn_num_heads: int = 8
    cross_attn_head_dim: int = 64
    # Width of the cross-attention block's feed-forward, as a multiple of the LM's hidden size.
    cross_attn_ff_mult: int = 4
    # Perceiver resampler: layers, heads x head width, learned latents (= tokens per image), feed-forward multiple.
    perceiver_num_layers: int = 6
    perceiver_num_heads: int = 8
    perceiver_head_dim: int = 64
    num_latents: int = 64
    perceiver_ff_mult: int = 4
    # Sizes of the perceiver's learned per-frame / per-image time embeddings; None = none (the released models).
    max_num_frames: int | None = None
    max_num_media: int | None = None
    # eps of every LayerNorm of the perceiver and of the cross-attention blocks (torch's default).
    layer_norm_eps: float = 1e-5
    # Activation of the perceiver and cross-attention feed-forwards (exact GELU).
    hidden_act: str = "gelu"
    # The <image> token: each text token cross-attends to the latents of the most recent <image> at or before it.
    media_token_id: int = 32001
    # <|endofchunk|>: ends one (image, text) chunk; no role in the forward pass, the usual stop token.
    eoc_token_id: int = 32000
    # Pass the patch tokens through the vision tower's ln_post. False = the released models (open_clip <= 2.22
    # returned them raw); True = what open_clip >= 2.23 does by default.
    patch_tokens_ln_post: bool = False
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("cross_attn_every_n_layers", "cross_attn_num_heads", "cross_attn_head_dim", "num_latents",
                     "perceiver_num_layers", "perceiver_num_heads", "perceiver_head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        vocab = self.text_config.vocab_size
        for name in ("media_token_id", "eoc_token_id"):
            if not 0 <= getattr(self, name) < vocab:
                raise ValueError(f"{name} {getattr(self, name)} is outside the language model's vocabulary "
                                 f"(0..{vocab - 1})")
        if not self.cross_attention_targets():
            raise ValueError(f"cross_attn_every_n_layers={self.cross_attn_every_n_layers} places no cross-attention in "
                             f"a {self.text_config.num_hidden_layers}-layer language model")

    def cross_attention_targets(self) -> list[int]:
        """Indices of the decoder layers that get a cross-attention block in front of them."""
        n = self.cross_attn_every_n_layers
        return [i for i in range(self.text_config.num_hidden_layers) if (i + 1) % n == 0]
