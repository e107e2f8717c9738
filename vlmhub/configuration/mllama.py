"""Llama 3.2 Vision (Mllama): a tiled ViT and a Llama decoder with gated cross-attention layers.

Defaults are the released 11B model (560 px tiles, 32 + 8 vision layers, 40-layer text stack with 8 cross-attention
layers). The language model is any transformers causal-LM config (Llama for every release) holding only the
self-attention layers; `cross_attention_layers` says where the cross-attention layers sit.
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .common import VisionTowerConfig


def supported_aspect_ratios(max_num_tiles: int) -> list[list[int]]:
    """Every (rows, cols) grid of at most max_num_tiles tiles, ordered by rows then cols (id = index + 1)."""
    return [[r, c] for r in range(1, max_num_tiles + 1) for c in range(1, max_num_tiles + 1) if r * c <= max_num_tiles]


class VlmhubMllamaVisionConfig(VisionTowerConfig):
    model_type = "vlmhub_mllama_vision_model"

    hidden_size: int = 1280
    intermediate_size: int = 5120
    # Layers of the local (per-image) encoder.
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    # Side of one tile in pixels (the processor's tile size).
    image_size: int = 560
    patch_size: int = 14
    hidden_act: str = "gelu"
    # Mllama's vision attention has no biases at all (q/k/v and o); its MLP has them.
    qkv_bias: bool = False
    patch_bias: bool = False
    # ln_pre after the embeddings and ln_post after the local encoder (on every token).
    pre_layernorm: bool = True
    post_layernorm: str = "all"
    # Layers of the gated global encoder that sees all tiles of an image after ln_post.
    num_global_layers: int = 8
    # Tiles per image; pixel_values always carry this many (absent tiles are zeros).
    max_num_tiles: int = 4
    # Local layers whose INPUT (hidden_states[i], i.e. the output of layer i-1) is concatenated to the output,
    # as Meta's return_intermediate. transformers >= 5 reads the output of layer i instead (see conversion).
    intermediate_layers_indices: list[int] | None = None
    # (rows, cols) grids, in aspect-ratio-id order (id = index + 1, 0 = no image); None = every grid <= max_num_tiles.
    supported_aspect_ratios: list[list[int]] | None = None
    # Width of the vision features handed to the projector: hidden_size * (1 + len(intermediate_layers_indices)).
    vision_output_dim: int | None = None
    # Tokens of each tile are padded with zeros to a multiple of this before the encoders (Meta's mult8 padding).
    pad_tokens_to_multiple_of: int = 8

    def __post_init__(self, **kwargs):
        if self.intermediate_layers_indices is None:
            self.intermediate_layers_indices = [3, 7, 15, 23, 30]
        if self.supported_aspect_ratios is None:
            self.supported_aspect_ratios = supported_aspect_ratios(self.max_num_tiles)
        expected_dim = self.hidden_size * (1 + len(self.intermediate_layers_indices))
        if self.vision_output_dim is None:
            self.vision_output_dim = expected_dim
        super().__post_init__(**kwargs)
        self._validate()

    def _validate(self):
        expected_dim = self.hidden_size * (1 + len(self.intermediate_layers_indices))
        if self.vision_output_dim != expected_dim:
            raise ValueError(f"vision_output_dim must be hidden_size * (1 + {len(self.intermediate_layers_indices)} "
                             f"intermediate layers) = {expected_dim}, got {self.vision_output_dim}")
        bad = [i for i in self.intermediate_layers_indices if not 0 <= i <= self.num_hidden_layers]
        if bad:
            raise ValueError(f"intermediate_layers_indices {bad} out of range for {self.num_hidden_layers} layers")
        too_big = [r for r in self.supported_aspect_ratios if r[0] * r[1] > self.max_num_tiles]
        if too_big:
            raise ValueError(f"supported_aspect_ratios {too_big} need more than max_num_tiles={self.max_num_tiles} tiles")

    @property
    def num_positions(self) -> int:
        """Tokens of one tile: patches plus the class token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def padded_positions(self) -> int:
        """Tokens of one tile after padding: Meta pads 1..multiple tokens (8 - n % 8; never 0)."""
        m = self.pad_tokens_to_multiple_of
        return self.num_positions + (m - self.num_positions % m)


LLAMA_11B_TEXT = dict(  # the language model of Llama-3.2-11B-Vision, without its 8 cross-attention layers
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False,
    bos_token_id=128000, eos_token_id=128001, pad_token_id=128004,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=8192),
)


class VlmhubMllamaConfig(PretrainedConfig):
    model_type = "vlmhub_mllama"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "vision_config": VlmhubMllamaVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs=LLAMA_11B_TEXT),
    }

    vision_config: dict | VlmhubMllamaVisionConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    # Positions of the cross-attention layers in the interleaved stack of text_config.num_hidden_layers
    # self-attention layers plus these (transformers' numbering): [3, 8, ...] = before self-attention layers 3, 7, ...
    cross_attention_layers: list[int] | None = None
    # The image token. Meta's model gives ids >= vocab_size their own trainable table (learnable_embedding); the
    # image token is its first row (128256 = vocab_size in the release).
    image_token_index: int = 128256
    # Rows of that table (Meta: 8); ids vocab_size .. vocab_size + num_learnable_embeddings - 1 read from it. 0 after
    # resize_token_embeddings, which folds them into the text table (as transformers' one table holds them).
    num_learnable_embeddings: int = 8
    # Zero the cross-attention output of text tokens that see no image (before the first one), as Meta's reference
    # does. transformers' Mllama (through 5.25) zeroes only the cross-attention MLP there: set False to match it exactly.
    mask_cross_attention_rows: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.cross_attention_layers is None:
            self.cross_attention_layers = [3, 8, 13, 18, 23, 28, 33, 38]
        super().__post_init__(**kwargs)
        self.cross_attention_layers = sorted(self.cross_attention_layers)
        self.cross_attention_targets()  # validates the placement
        vocab, learnable = self.text_config.vocab_size, self.num_learnable_embeddings
        if learnable and not vocab <= self.image_token_index < vocab + learnable:
            raise ValueError(f"image_token_index {self.image_token_index} must be one of the learnable ids "
                             f"{vocab}..{vocab + learnable - 1} (vocab_size {vocab})")
        if not learnable and not 0 <= self.image_token_index < vocab:  # folded: resize_token_embeddings
            raise ValueError(f"image_token_index {self.image_token_index} must be an id of the text table "
                             f"(vocab_size {vocab}) when num_learnable_embeddings is 0")

    def cross_attention_targets(self) -> list[int]:
        """Index of the self-attention layer each cross-attention layer runs right before (Meta's fusion schedule)."""
        positions, n_self = self.cross_attention_layers, self.text_config.num_hidden_layers
        total = n_self + len(positions)
        if len(set(positions)) != len(positions) or any(not 0 <= p < total for p in positions):
            raise ValueError(f"cross_attention_layers {positions} must be distinct positions in the {total}-layer "
                             f"stack ({n_self} self-attention + {len(positions)} cross-attention layers)")
        targets = [p - i for i, p in enumerate(positions)]  # self layers placed before position p
        if targets[-1] >= n_self or len(set(targets)) != len(targets):
            raise ValueError(f"cross_attention_layers {positions}: every cross-attention layer must be followed by a "
                             "self-attention layer, and no two may be adjacent (Meta's fusion schedule cannot express it)")
        return targets
