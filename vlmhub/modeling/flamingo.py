"""Flamingo (OpenFlamingo): ViT patch tokens -> Perceiver resampler -> gated cross-attention inside any causal LM.

Inputs as open_flamingo's `Flamingo.forward`: pixel_values (B, images, frames, 3, H, W) (its vision_x), input_ids
(its lang_x) with one `<image>` token per image, attention_mask; logits (B, T, vocab_size).

Design:
- The language model is `AutoModelForCausalLM.from_config(config.text_config)`; a `GatedCrossAttentionLayer`
  (connectors/gated_cross_attention) is put in front of every cross_attn_every_n_layers-th decoder layer at
  construction. The resampled image tokens and the media mask reach those layers as forward arguments of the
  language model (`media_states`, `media_mask`); no layer keeps state between calls.
- Media locations (open_flamingo's only_attend_immediate_media): `image_index` = cumulative count of `<image>`
  tokens, so a token cross-attends only to the latents of the most recent `<image>` at or before it. Tokens before
  the first image (index 0) get a zero cross-attention output, but the block's gated feed-forward still applies.
- Generation: the image keys/values are projected once at prefill into the generation cache (slots after the
  decoder layers) and reused; `image_index` for the new tokens is recomputed from the full sequence at each step.
"""

import torch
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.flamingo import VlmhubFlamingoConfig
from .blocks import VisionTransformer
from .blocks.attention import cached_media
from .connectors.gated_cross_attention import GatedCrossAttentionLayer, insert_cross_attention, prepare_media_mask
from .connectors.perceiver import PerceiverResampler
from .language_model import LanguageModelAccessors
from .pretrained import VlmhubPreTrainedModel


def image_index_from_ids(input_ids: torch.LongTensor, media_token_id: int) -> torch.LongTensor:
    """(B, T) -> (B, T): 1-based index of the most recent <image> at or before each token, 0 before the first."""
    return (input_ids == media_token_id).long().cumsum(-1)


def media_mask(index: torch.LongTensor, num_images: int, tokens_per_image: int) -> torch.Tensor:
    """(B, T) image index -> boolean (B, T, num_images * tokens_per_image): True on the latents of that image.
    Indices past the last image (an <image> generated after the prompt) stay on the last one."""
    owner = torch.arange(num_images * tokens_per_image, device=index.device) // tokens_per_image + 1  # (S,)
    return index.clamp(max=num_images)[..., None] == owner


class VlmhubFlamingoPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubFlamingoConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "PerceiverLayer", "DecoderLayerWithCrossAttention",
                         "GatedCrossAttentionLayer"]
    _supports_flash_attn = False  # the media mask is an arbitrary boolean mask

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, PerceiverResampler):
            init.normal_(module.latents, std=1.0)  # open_flamingo: torch.randn
            for p in (module.frame_embs, module.media_time_embs):
                if p is not None:
                    init.normal_(p, std=1.0)
        elif isinstance(module, GatedCrossAttentionLayer):
            init.zeros_(module.attn_gate)
            init.zeros_(module.mlp_gate)


class VlmhubFlamingoForConditionalGeneration(LanguageModelAccessors, VlmhubFlamingoPreTrainedModel, GenerationMixin):
    # What training stage 1 trains (and stage 2 trains in full beside LoRA): the Perceiver resampler and every gated
    # cross-attention block inside the decoder (a name matches a top-level module or the last part of a path).
    connector_modules = ("perceiver", "gated_cross_attn")

    def __init__(self, config: VlmhubFlamingoConfig):
        super().__init__(config)
        vision = config.vision_config
        self.vision_model = VisionTransformer(vision)
        self.perceiver = PerceiverResampler(
            vision, hidden_size=vision.hidden_size, num_layers=config.perceiver_num_layers,
            num_heads=config.perceiver_num_heads, head_dim=config.perceiver_head_dim, num_latents=config.num_latents,
            ff_mult=config.perceiver_ff_mult, max_num_frames=config.max_num_frames,
            max_num_media=config.max_num_media, hidden_act=config.hidden_act, norm_eps=config.layer_norm_eps,
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        n_self = config.text_config.num_hidden_layers
        self.cross_attention_slots = [n_self + j for j in range(len(config.cross_attention_targets()))]
        blocks = {target: self._cross_attention_layer(slot)
                  for target, slot in zip(config.cross_attention_targets(), self.cross_attention_slots)}
        insert_cross_attention(self.language_model.get_decoder().layers, blocks)
        self.post_init()

    def _cross_attention_layer(self, layer_idx: int) -> GatedCrossAttentionLayer:
        config, text = self.config, self.language_model.config  # text: the object whose kernel choice the LM reads
        return GatedCrossAttentionLayer(
            text, hidden_size=text.hidden_size, num_heads=config.cross_attn_num_heads,
            head_dim=config.cross_attn_head_dim, media_dim=config.vision_config.hidden_size,
            intermediate_size=text.hidden_size * config.cross_attn_ff_mult, hidden_act=config.hidden_act,
            norm="layer", norm_eps=config.layer_norm_eps, mlp="plain", qk_norm=False,
            mask_rows_in_attention=True, mask_rows_in_mlp=False, layer_idx=layer_idx,
        )

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """pixel_values (B, images, frames, 3, H, W) -> last_hidden_state: patch tokens (B, images, frames, N, Dv)
        (no class token, no projection; ln_post only if config.patch_tokens_ln_post); pooler_output: the
        resampled tokens (B, images, num_latents, Dv) that cross-attention reads."""
        if pixel_values.ndim != 6:
            raise ValueError("pixel_values must be (batch, images, frames, channels, height, width) as open_flamingo's "
                             f"vision_x, got shape {tuple(pixel_values.shape)}")
        B, T, F = pixel_values.shape[:3]
        patches = self.vision_model(pixel_values.flatten(0, 2)).last_hidden_state[:, 1:]  # (B*T*F, N, Dv)
        if self.config.patch_tokens_ln_post:
            patches = self.vision_model.post_layernorm(patches)
        patches = patches.reshape(B, T, F, *patches.shape[1:])
        return BaseModelOutputWithPooling(last_hidden_state=patches, pooler_output=self.perceiver(patches))

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name before transformers 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_index: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """image_index (B, T) or (B, past + T): the 1-based image each token cross-attends to (0 = none); computed
        from input_ids when omitted (required for decode steps on a cache holding images; generate passes it)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds")
        media_states, num_images = None, self._cached_images(cache)
        if pixel_values is not None:
            self._check_image_tokens(input_ids, pixel_values.shape[1])
            media = self.get_image_features(pixel_values).pooler_output  # (B, images, n, Dv)
            media_states, num_images = media.flatten(1, 2), media.shape[1]
        mask = None
        if num_images:
            T = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            index = self._image_index(input_ids, image_index, T, cache)
            mask = prepare_media_mask(media_mask(index, num_images, self.config.num_latents))
        return self.language_model(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, cache=cache, use_cache=use_cache, labels=labels,
            logits_to_keep=logits_to_keep, media_states=media_states, media_mask=mask, **kwargs,
        )

    def _cached_images(self, cache) -> int:
        """How many images' keys/values the cache holds (0 = none)."""
        cached = cached_media(cache, self.cross_attention_slots[0])
        return 0 if cached is None else cached[0].shape[-2] // self.config.num_latents

    def _image_index(self, input_ids, index, length: int, cache) -> torch.LongTensor:
        past = cache.get_seq_length() if cache is not None else 0
        if index is None:
            if input_ids is None or past:
                raise ValueError("pass image_index (the 1-based image each token attends to, e.g. vlmhub.modeling."
                                 "flamingo.image_index_from_ids(full_input_ids, media_token_id)) when calling with "
                                 f"inputs_embeds or on a cache that already holds {past} tokens; generate() does it")
            return image_index_from_ids(input_ids, self.config.media_token_id)
        if index.shape[-1] == length:
            return index
        if index.shape[-1] != past + length:
            raise ValueError(f"image_index covers {index.shape[-1]} tokens: expected the {length} new tokens or all "
                             f"{past + length} (cached + new)")
        return index[:, past:]

    def _check_image_tokens(self, input_ids, num_images: int) -> None:
        """Every sample uses at most `num_images` <image> tokens, and at least one sample uses them all."""
        if input_ids is None:
            return
        counts = (input_ids == self.config.media_token_id).sum(-1).tolist()
        if max(counts) != num_images:
            raise ValueError(f"each image needs one <image> token (id {self.config.media_token_id}) in its text: the "
                             f"samples have {counts} <image> tokens but pixel_values hold {num_images} images per "
                             "sample; build the prompts with the processor")

    def prepare_inputs_for_generation(self, input_ids=None, next_sequence_length=None, inputs_embeds=None,
                                      pixel_values=None, image_index=None, use_cache=True, is_first_iteration=False,
                                      **kwargs):
        """Images only at prefill (their keys/values are cached then); image_index of the whole sequence so far."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, inputs_embeds=inputs_embeds, use_cache=use_cache,
            is_first_iteration=is_first_iteration, **kwargs,
        )
        if is_first_iteration or not use_cache:
            inputs["pixel_values"] = pixel_values
        if image_index is None and input_ids is not None and input_ids.shape[1]:
            image_index = image_index_from_ids(input_ids, self.config.media_token_id)
        if image_index is not None:
            ids = inputs.get("input_ids")
            step = (ids if ids is not None else inputs["inputs_embeds"]).shape[1]
            inputs["image_index"] = image_index[:, -step:]
        return inputs
