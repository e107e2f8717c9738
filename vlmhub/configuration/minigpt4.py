"""MiniGPT-4 (Zhu et al. 2023): BLIP-2's frozen EVA ViT + Q-Former, one linear layer (`llama_proj`), Vicuna/Llama.

The Llama-2 variant has no Q-Former: every 4 adjacent ViT patch tokens (CLS dropped) are concatenated and projected.
"""

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .blip2 import VlmhubBlip2VisionConfig, VlmhubQFormerConfig


class VlmhubMiniGPT4Config(PretrainedConfig):
    model_type = "vlmhub_minigpt4"
    sub_configs_defaults = {
        "vision_config": VlmhubBlip2VisionConfig,
        "qformer_config": VlmhubQFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | VlmhubBlip2VisionConfig | None = None
    # Ignored when use_qformer is False.
    qformer_config: dict | VlmhubQFormerConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    # True: Vicuna MiniGPT-4 (query outputs -> llama_proj); False: the Llama-2 variant (merged patches -> llama_proj).
    use_qformer: bool = True
    # Llama-2 variant: how many consecutive patch tokens are concatenated into one LM token.
    num_merged_patches: int = 4
    # Eps of `ln_vision` on the ViT output (LAVIS' LayerNorm default).
    vision_layernorm_eps: float = 1e-5
    # The vocabulary id that marks where the image features go.
    image_token_id: int | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        patches = self.vision_config.num_patches
        if not self.use_qformer and patches % self.num_merged_patches:
            raise ValueError(f"{patches} patches cannot be merged in groups of {self.num_merged_patches}")
        vocab = self.text_config.vocab_size
        if self.image_token_id is not None and not 0 <= self.image_token_id < vocab:
            raise ValueError(f"image_token_id {self.image_token_id} is outside the language model's vocabulary (0..{vocab - 1})")

    @property
    def num_image_tokens(self) -> int:
        """LM tokens per image: the query count, or patches / num_merged_patches."""
        if self.use_qformer:
            return self.qformer_config.num_query_tokens
        return self.vision_config.num_patches // self.num_merged_patches
