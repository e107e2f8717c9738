"""LLaVA / LLaVA-1.5 / LLaVA-NeXT: shared ViT -> projector -> any transformers causal LM, image features merged at
the image tokens. Same inputs and outputs as transformers' LlavaForConditionalGeneration and
LlavaNextForConditionalGeneration (pixel_values of AnyRes models are (images, crops, 3, H, W) with image_sizes).
"""

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.llava import VlmhubLlavaConfig
from ..geometry.anyres import grid_shape, unpadded_shape
from .blocks import VisionTransformer
from .connectors import Projector, TokenMerger, pool_patch_grid
from .language_model import LanguageModelMixin, pre_encoded_images
from .pretrained import VlmhubPreTrainedModel


class VlmhubLlavaPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubLlavaConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VlmhubLlavaForConditionalGeneration) and module.image_newline is not None:
            nn.init.normal_(module.image_newline, std=module.image_newline.shape[0] ** -0.5)


class VlmhubLlavaForConditionalGeneration(LanguageModelMixin, VlmhubLlavaPreTrainedModel, GenerationMixin):
    # What training stage 1 trains (and stage 2 trains in full beside LoRA).
    connector_modules = ("multi_modal_projector",)

    def __init__(self, config: VlmhubLlavaConfig):
        super().__init__(config)
        feature_layers, _ = config.feature_selection()
        text_width = config.text_config.hidden_size
        self.vision_tower = VisionTransformer(config.vision_config)
        # Parameter-free ToMe compression of each crop's features (identity when visual_token_merge == 0).
        keep_cls = config.vision_feature_select_strategy == "cls_patch"
        self.token_merger = TokenMerger(config.visual_token_merge, protect_first=keep_cls)
        self.multi_modal_projector = Projector(
            config.projector_type, config.vision_config.hidden_size * len(feature_layers), text_width,
            bias=config.projector_bias,
        )
        # NeXT's learned end-of-row token; only the spatial_unpad merge writes rows.
        unpad = config.patch_merge_type == "spatial_unpad"
        self.image_newline = nn.Parameter(torch.zeros(text_width)) if unpad else None
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def crop_features(self, pixel_values: torch.Tensor, layers: list[int], strategy: str) -> torch.Tensor:
        """Projected features of each crop: (crops, 3, H, W) -> (crops, tokens_per_crop, text width), from the tower
        `layers` and the select `strategy` (config.feature_selection)."""
        states = self.vision_tower.hidden_states_at(pixel_values, layers)
        if strategy == "patch":
            states = [s[:, 1:] for s in states]  # drop the class token
        features = pool_patch_grid(torch.cat(states, dim=-1), self.config.spatial_pool_stride)
        return self.multi_modal_projector(self.token_merger(features))

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None,
                           vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs):
        """pooler_output: one (tokens, text width) tensor per image, in the order their image tokens appear. Unlike
        transformers, no last_hidden_state or hidden_states: the tower stops at the layer the features come from.
        vision_feature_layer / vision_feature_select_strategy override the config for this call, as in transformers
        (pass them by name: transformers' LLaVA and LLaVA-NeXT put them in different positions)."""
        if image_sizes is not None:
            image_sizes = torch.as_tensor(image_sizes)
            if image_sizes.ndim != 2 or image_sizes.shape[-1] != 2:  # e.g. transformers' LLaVA-1.5 order: (px, layer)
                raise TypeError(f"image_sizes must be (images, 2) (height, width) pairs, got {image_sizes.tolist()}; "
                                "pass vision_feature_layer and vision_feature_select_strategy by name")
        layers, strategy = self.config.feature_selection(vision_feature_layer, vision_feature_select_strategy)
        if self.config.image_aspect_ratio != "anyres":
            if pixel_values.ndim == 5:  # (images, 1, 3, H, W) from a batched processor
                pixel_values = pixel_values.flatten(0, 1)
            return BaseModelOutputWithPooling(pooler_output=list(self.crop_features(pixel_values, layers, strategy)))
        if image_sizes is None:
            raise ValueError("AnyRes models need image_sizes (height, width) for every image, as the processor returns")
        crops = [self.num_crops(size) for size in image_sizes.tolist()]
        if pixel_values.ndim == 5:  # (images, max_crops, 3, H, W), padded with unused crops
            pixel_values = torch.cat([p[:n] for p, n in zip(pixel_values, crops)])
        if pixel_values.shape[0] != sum(crops):
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} crops but image_sizes need {sum(crops)}")
        features = self.crop_features(pixel_values, layers, strategy).split(crops)
        packed = [self.pack_anyres(f, size) for f, size in zip(features, image_sizes.tolist())]
        return BaseModelOutputWithPooling(pooler_output=packed)

    def num_crops(self, size) -> int:
        crop = self.config.vision_config.image_size
        rows, cols = grid_shape(tuple(size), self.config.image_grid_pinpoints, crop)
        return 1 + rows * cols

    def pack_anyres(self, features: torch.Tensor, size) -> torch.Tensor:
        """(1 + rows*cols, side*side, D) crop features -> one sequence: base view, then the grid by patch_merge_type."""
        base, grid = features[0], features[1:]
        if self.config.patch_merge_type == "flat" or len(grid) == 0:
            tail = grid.flatten(0, 1)
            if self.image_newline is not None and len(grid) == 0:
                tail = self.image_newline[None]
            return torch.cat([base, tail])
        side, D = self.config.feature_side, features.shape[-1]
        rows, cols = grid_shape(tuple(size), self.config.image_grid_pinpoints, self.config.vision_config.image_size)
        grid = grid.view(rows, cols, side, side, D).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, D)
        if self.config.patch_merge_type == "spatial":
            return torch.cat([base, grid.flatten(0, 1)])
        top, bottom, left, right = unpadded_shape(tuple(size), (rows * side, cols * side))
        grid = grid[top:bottom, left:right]  # (h, w, D) without the letterbox rows/columns
        newline = self.image_newline.to(grid.dtype).expand(grid.shape[0], 1, D)
        return torch.cat([base, torch.cat([grid, newline], dim=1).flatten(0, 1)])

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name before transformers 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        vision_feature_layer=None,
        vision_feature_select_strategy=None,
        mm_encoder_outputs: dict | None = None,
        **kwargs,
    ) -> LlavaCausalLMOutputWithPast:
        """vision_feature_layer / vision_feature_select_strategy: this call's choice instead of the config's, as in
        transformers (see config.feature_selection). mm_encoder_outputs: {"image": get_image_features(...)}, images
        encoded earlier (transformers' generate encodes them once this way)."""
        image = pre_encoded_images(pixel_values, mm_encoder_outputs)
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, image_sizes=image_sizes, vision_feature_layer=vision_feature_layer,
                                            vision_feature_select_strategy=vision_feature_select_strategy)
        out = self.run_language_model(  # the per-image features are joined while merging, not held during the LM
            input_ids, inputs_embeds, None if image is None else image.pooler_output, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, labels=labels, logits_to_keep=logits_to_keep, **kwargs,
        )
        return LlavaCausalLMOutputWithPast(loss=out.loss, logits=out.logits, cache=out.cache,
                                           hidden_states=out.hidden_states, attentions=out.attentions, image_outputs=image)
