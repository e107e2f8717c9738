"""LLaVA, LLaVA-1.5 and LLaVA-NeXT: one config family, the generations differ by connector and image handling."""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..geometry.anyres import anyres_num_tokens, grid_shape
from .clip import VlmhubCLIPVisionConfig

SELECT_STRATEGIES = ("patch", "cls_patch")
TRANSFORMERS_SELECT_STRATEGIES = {"default": "patch", "full": "cls_patch"}  # its names for the same two choices
MERGE_TYPES = ("flat", "spatial", "spatial_unpad")
ASPECT_RATIOS = ("square", "pad", "anyres")


class VlmhubLlavaConfig(PretrainedConfig):
    model_type = "vlmhub_llava"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        # CLIP ViT-L/14-336, the tower of LLaVA-1.5 and 1.6.
        "vision_config": SubConfigSpec(
            config_class=VlmhubCLIPVisionConfig,
            init_kwargs=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             image_size=336, patch_size=14, projection_dim=768),
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | VlmhubCLIPVisionConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    # A real vocabulary id that marks where image features go (LLaVA's sentinel -200 is converted to it).
    image_token_id: int = 32000
    # "linear" (LLaVA) or "mlp<N>x_<act>" ("mlp2x_gelu": LLaVA-1.5 and NeXT).
    projector_type: str = "mlp2x_gelu"
    projector_bias: bool = True
    # Which tower layer(s) feed the projector (-2: the penultimate, as LLaVA); a list concatenates several.
    vision_feature_layer: int | list[int] = -2
    # "patch" drops the class token (LLaVA's default), "cls_patch" keeps it.
    vision_feature_select_strategy: str = "patch"
    # Preprocessing: "square" (plain resize/crop), "pad" (1.5: expand to a square on the mean colour), "anyres" (NeXT).
    image_aspect_ratio: str = "pad"
    # AnyRes candidate canvases as (height, width); None unless image_aspect_ratio == "anyres".
    image_grid_pinpoints: list[list[int]] | None = None
    # How an AnyRes image's crops become one token sequence (see vlmhub.geometry.anyres.anyres_num_tokens).
    patch_merge_type: str = "flat"
    # Visual-token compression: average-pool the patch grid with this stride before the projector (2: 4x fewer).
    spatial_pool_stride: int = 1
    # Visual-token compression: ToMe token merging removes this many tokens per crop (after any pooling), 0 = off.
    visual_token_merge: int = 0
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}")
        if self.patch_merge_type not in MERGE_TYPES:
            raise ValueError(f"patch_merge_type must be one of {MERGE_TYPES}, got {self.patch_merge_type!r}")
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {self.image_aspect_ratio!r}")
        if (self.image_aspect_ratio == "anyres") != bool(self.image_grid_pinpoints):
            raise ValueError("image_grid_pinpoints must be given exactly when image_aspect_ratio is 'anyres'")
        if self.image_aspect_ratio == "anyres" and self.vision_feature_select_strategy != "patch":
            raise ValueError("AnyRes arranges patch tokens on a grid: vision_feature_select_strategy must be 'patch'")
        side = self.vision_config.image_size // self.vision_config.patch_size
        if side % self.spatial_pool_stride:
            raise ValueError(f"spatial_pool_stride {self.spatial_pool_stride} does not divide the {side}x{side} patch grid")
        if self.spatial_pool_stride > 1 and self.vision_feature_select_strategy != "patch":
            raise ValueError("spatial pooling needs the patch grid alone: use vision_feature_select_strategy='patch'")
        self._check_token_merge()

    def _check_token_merge(self) -> None:
        r, patches = self.visual_token_merge, self.feature_side**2
        if not isinstance(r, int) or isinstance(r, bool) or r < 0:
            raise ValueError(f"visual_token_merge must be a number of tokens >= 0, got {r!r}")
        if r >= patches:
            raise ValueError(f"visual_token_merge {r} would leave no tokens: a crop has {patches} patch tokens "
                             f"(after pooling), so at most {patches - 1} can be merged")
        if r and self.image_aspect_ratio == "anyres" and self.patch_merge_type != "flat":
            raise ValueError(f"visual_token_merge cannot be combined with patch_merge_type={self.patch_merge_type!r}: "
                             "merged tokens no longer form the patch grid it arranges; use patch_merge_type='flat'")

    def feature_selection(self, layer=None, strategy: str | None = None) -> tuple[list[int], str]:
        """(tower layers, select strategy) of one forward: this config's, or the per-call `vision_feature_layer` and
        `vision_feature_select_strategy` that transformers' LLaVA takes (its strategy names or ours), checked against
        what the model was built for: the projector's input width fixes the number of layers, and AnyRes, pooling and
        token merging need the strategy they were configured with."""
        configured = self.vision_feature_layer
        layers = [configured] if isinstance(configured, int) else list(configured)
        if layer is not None:
            chosen = [layer] if isinstance(layer, int) else list(layer)
            if len(chosen) != len(layers):
                raise ValueError(f"vision_feature_layer {layer!r} selects {len(chosen)} layers but the projector takes "
                                 f"{len(layers)} (this model's vision_feature_layer is {configured!r})")
            layers = chosen
        if strategy is None or strategy == self.vision_feature_select_strategy:
            return layers, self.vision_feature_select_strategy
        named = TRANSFORMERS_SELECT_STRATEGIES.get(strategy, strategy)
        if named not in SELECT_STRATEGIES:
            raise ValueError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES} (transformers' "
                             f"{tuple(TRANSFORMERS_SELECT_STRATEGIES)}), got {strategy!r}")
        fixed = {"AnyRes": self.image_aspect_ratio == "anyres", "spatial pooling": self.spatial_pool_stride > 1,
                 "token merging": self.visual_token_merge > 0}
        if named != self.vision_feature_select_strategy and any(fixed.values()):
            reason = next(name for name, on in fixed.items() if on)
            raise ValueError(f"vision_feature_select_strategy {strategy!r} cannot replace the configured "
                             f"{self.vision_feature_select_strategy!r} of a model with {reason}")
        return layers, named

    @property
    def feature_side(self) -> int:
        """Side of one crop's (pooled) patch grid."""
        return self.vision_config.image_size // self.vision_config.patch_size // self.spatial_pool_stride

    @property
    def tokens_per_crop(self) -> int:
        """Visual tokens of one crop: the (pooled) patch grid, minus the merged ones, plus the class token if kept."""
        return self.feature_side**2 - self.visual_token_merge + (self.vision_feature_select_strategy == "cls_patch")

    def tokens_per_image(self, image_size: tuple[int, int] | None = None) -> int:
        """Visual tokens of one image of (height, width) (the size matters only under AnyRes)."""
        if self.image_aspect_ratio != "anyres":
            return self.tokens_per_crop
        crop, pinpoints = self.vision_config.image_size, self.image_grid_pinpoints
        if self.visual_token_merge:  # "flat" only: every crop gives tokens_per_crop tokens
            rows, cols = grid_shape(tuple(image_size), pinpoints, crop)
            return self.tokens_per_crop * (1 + rows * cols)
        return anyres_num_tokens(tuple(image_size), pinpoints, crop, self.feature_side, self.patch_merge_type)
