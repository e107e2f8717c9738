"""The base class every vlmhub model derives from: transformers' PreTrainedModel plus our shared init."""

import torch
from transformers import PreTrainedModel
from transformers import initialization as init

from .blocks import VisionEmbeddings


class VlmhubPreTrainedModel(PreTrainedModel):
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings"]
    _skip_keys_device_placement = ["past_key_values"]

    def post_init(self):
        super().post_init()
        self._share_attn_implementation(self.config._attn_implementation, only_unset=True)

    def set_attn_implementation(self, attn_implementation, **kwargs):
        if isinstance(attn_implementation, str):
            # Sub-configs first: our towers are plain modules, so transformers would otherwise set them "in the dark".
            checked = self._check_and_adjust_attn_implementation(attn_implementation, is_init_check=False)
            self._share_attn_implementation(checked)
        super().set_attn_implementation(attn_implementation, **kwargs)

    def _share_attn_implementation(self, implementation, only_unset=False):
        """Our vision/text towers read their sub-config's kernel choice: give them the model's."""
        for key in self.config.sub_configs:
            sub = getattr(self.config, key, None)
            if sub is not None and not (only_unset and sub._attn_implementation):
                sub._attn_implementation_internal = implementation

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # Linear/Conv/Embedding ~ N(0, initializer_range), norms at identity
        if isinstance(module, VisionEmbeddings):
            D = module.class_embedding.shape[-1]
            init.normal_(module.class_embedding, std=D**-0.5)
            init.normal_(module.position_embedding, std=self._init_std())

    def _init_std(self) -> float:
        config = self.config.vision_config if "vision_config" in self.config.sub_configs else self.config
        return config.initializer_range
