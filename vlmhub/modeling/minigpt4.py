"""MiniGPT-4: BLIP-2's image side (EVA ViT -> ln_vision -> Q-Former) -> llama_proj -> Vicuna / Llama as soft prompt.

The Llama-2 variant skips the Q-Former: ln_vision(ViT) patch tokens (CLS dropped), 4 consecutive ones concatenated,
-> llama_proj. Inputs and outputs as VlmhubBlip2ForConditionalGeneration: input_ids carry `num_image_tokens` image
tokens per image where the original puts `<ImageHere>`.
"""

import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils.generic import can_return_tuple

from ..configuration.minigpt4 import VlmhubMiniGPT4Config
from .blip2 import Blip2VisionEncoder, ImageSoftPromptModel
from .connectors.qformer import QFormer


def merge_adjacent_patches(tokens: torch.Tensor, group: int) -> torch.Tensor:
    """(B, N, D) patch tokens -> (B, N / group, group * D): each run of `group` consecutive tokens concatenated."""
    B, N, D = tokens.shape
    if N % group:
        raise ValueError(f"{N} patch tokens cannot be merged in groups of {group}")
    return tokens.reshape(B, N // group, group * D)


class VlmhubMiniGPT4ForConditionalGeneration(ImageSoftPromptModel):
    config_class = VlmhubMiniGPT4Config
    # What training stage 1 trains (and stage 2 trains in full beside LoRA): llama_proj only, as MiniGPT-4 trains
    # (its Q-Former stays frozen from BLIP-2).
    connector_modules = ("llama_proj",)

    def __init__(self, config: VlmhubMiniGPT4Config):
        super().__init__(config)
        self.vision = Blip2VisionEncoder(config)
        self.qformer = QFormer(config.qformer_config) if config.use_qformer else None
        width = config.qformer_config.hidden_size if config.use_qformer else \
            config.vision_config.hidden_size * config.num_merged_patches
        self.llama_proj = nn.Linear(width, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False, **kwargs):
        """(B, 3, H, W) -> `image_outputs`; the soft prompt (pooler_output) is (B, num_image_tokens, text width)."""
        image_embeds = self.vision(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, Dv)
        if self.qformer is not None:
            query_output = self.qformer(image_embeds)  # (B, Q, Dq)
            return self.image_outputs(image_embeds, query_output, self.llama_proj(query_output))
        merged = merge_adjacent_patches(image_embeds[:, 1:], self.config.num_merged_patches)
        return self.image_outputs(image_embeds, None, self.llama_proj(merged))
