"""Llama 3.2 Vision (Mllama): a tiled ViT whose tokens feed gated cross-attention layers inside a Llama decoder.

Same inputs and outputs as transformers' MllamaForConditionalGeneration: pixel_values (B, images, tiles, 3, H, W),
aspect_ratio_ids (B, images), aspect_ratio_mask (B, images, tiles), cross_attention_mask (B, T, images, tiles);
logits (B, T, vocab_size); `hidden_states` and eager `attentions` list the cross-attention blocks as entries of their
own, where transformers lists its cross-attention layers (config.cross_attention_layers, positions in the whole stack).

Design:
- The language model is `AutoModelForCausalLM.from_config(config.text_config)` holding only the self-attention
  layers, so generation, caches and LoRA names come from transformers. At construction, each decoder layer that a
  cross-attention layer precedes is wrapped in a `DecoderLayerWithCrossAttention` (connectors/gated_cross_attention);
  the image tokens and their mask then travel as forward arguments (`media_states`, `media_mask`) that the decoder
  passes on to every layer.
- The image keys/values are projected once, at prefill, into the generation cache (slots after the self-attention
  layers); decode steps read them from there.
- Token ids >= vocab_size (the image token, 128256) embed from `learnable_embedding`, Meta's 8-row table, so the
  language model keeps a plain vocab_size embedding and the logits keep transformers' shape.
"""

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling, MultimodalCausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import selected_hidden_states

from ..configuration.mllama import VlmhubMllamaConfig, VlmhubMllamaVisionConfig
from .blocks import Encoder, EncoderLayer
from .blocks.attention import additive_mask
from .blocks.tiling import AspectRatioEmbedding, GatedTilePositionEmbedding
from .connectors.gated_cross_attention import GatedCrossAttentionLayer, insert_cross_attention, prepare_media_mask
from .language_model import LanguageModelAccessors
from .pretrained import VlmhubPreTrainedModel


class MllamaVisionTower(nn.Module):
    """Tiles of each image -> (B, images, tiles, tokens, vision_output_dim): patches + class token + tile embeddings,
    a local encoder over all tiles of an image, then a gated global encoder; the output is the global encoder's
    tokens concatenated with the inputs of the local layers listed in intermediate_layers_indices (interleaved,
    feature d*k_count + k as Meta's stack(dim=-1))."""

    def __init__(self, config: VlmhubMllamaVisionConfig):
        super().__init__()
        self.config = config
        D, ratios, tiles = config.hidden_size, len(config.supported_aspect_ratios), config.max_num_tiles
        self.patch_embedding = nn.Conv2d(config.num_channels, D, config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(D))
        self.pre_tile_embedding = AspectRatioEmbedding(num_aspect_ratios=ratios, max_num_tiles=tiles, hidden_size=D)
        self.position_embedding = GatedTilePositionEmbedding(
            num_aspect_ratios=ratios, max_num_tiles=tiles, num_positions=config.num_positions, hidden_size=D
        )
        self.pre_layernorm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.encoder = Encoder(config, attention_out_bias=False)
        self.post_layernorm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.post_tile_embedding = AspectRatioEmbedding(num_aspect_ratios=ratios, max_num_tiles=tiles, hidden_size=D)
        self.global_encoder = Encoder(config, num_layers=config.num_global_layers, gated=True, attention_out_bias=False)
        # Sizes every forward reads, as plain ints: a config attribute costs microseconds to read
        self.max_num_tiles, self.num_positions = tiles, config.num_positions
        self.padded_positions = config.padded_positions
        self.intermediate_layers_indices = tuple(config.intermediate_layers_indices)

    def embed(self, pixel_values: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        """(BI, T, 3, H, W) tiles -> (BI, T, N + 1, D) tokens with class token and position embeddings."""
        BI, T = pixel_values.shape[:2]
        x = self.patch_embedding(pixel_values.flatten(0, 1).to(self.patch_embedding.weight.dtype))  # (BI*T, D, h, w)
        D = x.shape[1]
        x = x.flatten(2).transpose(1, 2).reshape(BI, T, -1, D)  # (BI, T, N, D)
        x = self.pre_tile_embedding(x, aspect_ratio_ids)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(BI, T, 1, D), x], dim=2)  # (BI, T, N + 1, D)
        return self.position_embedding(x, aspect_ratio_ids)

    def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask) -> torch.Tensor:
        B, I, T = pixel_values.shape[:3]
        N1, L = self.num_positions, self.padded_positions
        ids = aspect_ratio_ids.reshape(B * I)
        x = self.pre_layernorm(self.embed(pixel_values.flatten(0, 1), ids))
        x = nn.functional.pad(x, (0, 0, 0, L - N1)).flatten(1, 2)  # zero pad tokens per tile: (BI, T*L, D)
        mask = additive_mask(encoder_attention_mask(aspect_ratio_mask.reshape(B * I, T), N1, L), x.dtype)
        x, taken = run_taking_inputs(self.encoder, x, mask, self.intermediate_layers_indices)
        x = self.post_tile_embedding(self.post_layernorm(x).view(B * I, T, L, -1), ids)
        x = self.global_encoder(x.flatten(1, 2), mask).last_hidden_state
        taken = torch.stack(taken, dim=-1).flatten(-2)  # (BI, T*L, D*k), feature d*k + j
        out = torch.cat([x, taken], dim=-1).view(B, I, T, L, -1)
        return out[:, :, :, :N1]  # drop the pad tokens


def encoder_attention_mask(tile_mask: torch.Tensor, num_tokens: int, padded: int) -> torch.Tensor:
    """(BI, T) real-tile mask -> boolean (BI, 1, T*padded, T*padded). As Meta's build_encoder_attention_mask, only
    pairs of two padding tokens (pad tokens or absent tiles) are masked: real tokens see the padding too."""
    real = tile_mask.bool()[:, :, None] & (torch.arange(padded, device=tile_mask.device) < num_tokens)  # (BI, T, L)
    real = real.flatten(1)
    return (real[:, :, None] | real[:, None, :])[:, None]


def run_taking_inputs(encoder: Encoder, x, mask, indices: list[int]):
    """Run an encoder, keeping the input of each layer in `indices` (index len(layers) = the output)."""
    taken = {}
    for i, layer in enumerate(encoder.layers):
        if i in indices:
            taken[i] = x
        x, _ = layer(x, mask)
    taken[len(encoder.layers)] = x
    return x, [taken[i] for i in indices]


class VlmhubMllamaPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubMllamaConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "DecoderLayerWithCrossAttention", "GatedCrossAttentionLayer"]
    _supports_flash_attn = False  # the tile and cross-attention masks are arbitrary 4D masks, as in transformers

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MllamaVisionTower):
            init.normal_(module.class_embedding, std=module.class_embedding.shape[0] ** -0.5)
        elif isinstance(module, GatedTilePositionEmbedding):
            init.normal_(module.embedding, std=module.embedding.shape[-1] ** -0.5)
            init.zeros_(module.gate)
        elif isinstance(module, AspectRatioEmbedding):
            init.zeros_(module.gate)
        elif isinstance(module, EncoderLayer) and module.gated:
            init.zeros_(module.gate_attn)
            init.zeros_(module.gate_ffn)
        elif isinstance(module, GatedCrossAttentionLayer):
            init.zeros_(module.attn_gate)
            init.zeros_(module.mlp_gate)


class VlmhubMllamaVisionModel(VlmhubMllamaPreTrainedModel):
    """The vision tower alone: last_hidden_state (B, images, tiles, tokens, vision_output_dim)."""

    config_class = VlmhubMllamaVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: VlmhubMllamaVisionConfig):
        super().__init__(config)
        self.vision_model = MllamaVisionTower(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.vision_model.patch_embedding

    @can_return_tuple
    def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask=None, **kwargs) -> BaseModelOutput:
        aspect_ratio_mask = check_image_inputs(self.config, pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        return BaseModelOutput(last_hidden_state=self.vision_model(pixel_values, aspect_ratio_ids, aspect_ratio_mask))


class VlmhubMllamaForConditionalGeneration(LanguageModelAccessors, VlmhubMllamaPreTrainedModel, GenerationMixin):
    # What training stage 1 trains (and stage 2 trains in full beside LoRA): the projector and every gated
    # cross-attention block inside the decoder (a name matches a top-level module or the last part of a path).
    connector_modules = ("multi_modal_projector", "gated_cross_attn")

    def __init__(self, config: VlmhubMllamaConfig):
        super().__init__(config)
        text = config.text_config
        self.vision_model = MllamaVisionTower(config.vision_config)
        self.multi_modal_projector = nn.Linear(config.vision_config.vision_output_dim, text.hidden_size, bias=True)
        learnable = config.num_learnable_embeddings  # 0 once resize_token_embeddings folded them into the text table
        self.learnable_embedding = nn.Embedding(learnable, text.hidden_size) if learnable else None
        self.language_model = AutoModelForCausalLM.from_config(text)
        n_self = text.num_hidden_layers
        blocks = {
            target: self._cross_attention_layer(layer_idx=n_self + j)
            for j, target in enumerate(config.cross_attention_targets())
        }
        insert_cross_attention(self.language_model.get_decoder().layers, blocks)
        self.post_init()

    def _cross_attention_layer(self, layer_idx: int) -> GatedCrossAttentionLayer:
        text = self.language_model.config  # the object whose kernel choice the decoder reads
        return GatedCrossAttentionLayer(
            text, hidden_size=text.hidden_size, num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads, intermediate_size=text.intermediate_size,
            hidden_act=text.hidden_act, norm_eps=text.rms_norm_eps,
            mask_rows_in_attention=self.config.mask_cross_attention_rows, layer_idx=layer_idx,
        )

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        """As in transformers' Mllama, whose one input table holds the text vocabulary, then the learnable rows (the
        image token first), then the new ids: the learnable rows are folded into the text table first (the model
        stays the same function of its ids, num_learnable_embeddings becomes 0), then it is resized, and the output
        layer with it."""
        if new_num_tokens is not None and self.config.num_learnable_embeddings:
            vocab, learnable = self.config.text_config.vocab_size, self.learnable_embedding.weight
            self.language_model.resize_token_embeddings(vocab + len(learnable), mean_resizing=False)
            with torch.no_grad():
                self.get_input_embeddings().weight[vocab:] = learnable
            self.learnable_embedding, self.config.num_learnable_embeddings = None, 0
        return super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Ids below vocab_size read the language model's table, the others (the image token) learnable_embedding."""
        vocab = self.config.text_config.vocab_size
        top = vocab + self.config.num_learnable_embeddings
        message = f"token ids must lie in 0..{top - 1} (vocab_size {vocab} + {top - vocab} learnable ids)"
        if torch.compiler.is_compiling():  # one graph: the range checked without leaving it, then the general path
            torch._assert_async(((input_ids >= 0) & (input_ids < top)).all(), message)
        else:
            low, high = (int(v) for v in input_ids.aminmax()) if input_ids.numel() else (0, 0)
            if low < 0 or high >= top:
                raise ValueError(f"{message}, got {low}..{high}")
            if high < vocab:  # text only (every decode step): one lookup
                return self.get_input_embeddings()(input_ids)
        if self.learnable_embedding is None:  # folded into the text table
            return self.get_input_embeddings()(input_ids)
        learnable = input_ids >= vocab
        embeds = self.get_input_embeddings()(input_ids.clamp(max=vocab - 1))
        extra = self.learnable_embedding((input_ids - vocab).clamp(min=0)).to(embeds.dtype)
        return torch.where(learnable[..., None], extra, embeds)

    @can_return_tuple
    def get_image_features(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask=None,
                           **kwargs) -> BaseModelOutputWithPooling:
        """last_hidden_state: the vision tower's output (B, images, tiles, tokens, vision_output_dim); pooler_output:
        the projected image tokens (B, images, tiles, tokens, text hidden) that cross-attention reads."""
        aspect_ratio_mask = check_image_inputs(self.config.vision_config, pixel_values, aspect_ratio_ids,
                                               aspect_ratio_mask)
        states = self.vision_model(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        return BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=self.multi_modal_projector(states))

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name before transformers 5.24
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        aspect_ratio_mask: torch.Tensor | None = None,
        aspect_ratio_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_mask: torch.Tensor | None = None,
        cross_attention_states: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MultimodalCausalLMOutputWithPast:
        """cross_attention_states: projected image tokens computed earlier (instead of pixels), (B, images * tiles *
        tokens, text hidden) or transformers' (B * images * tiles, tokens, text hidden)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds")
        if pixel_values is not None and cross_attention_states is not None:
            raise ValueError("Pass pixel_values or cross_attention_states, not both")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if labels is not None:
            self._check_labels(labels)
        image, cross_attention_states = self._media_states(input_ids, pixel_values, aspect_ratio_ids, aspect_ratio_mask,
                                                           cross_attention_states, len(inputs_embeds))
        media_mask = None
        if cross_attention_mask is not None:
            media_mask = self.media_mask(cross_attention_mask, inputs_embeds.shape[1], cache)
            media_mask = prepare_media_mask(media_mask)  # once for every cross-attention layer
        collected, selection = self._cross_attention_collector(kwargs)
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            use_cache=use_cache, labels=labels, logits_to_keep=logits_to_keep, media_states=cross_attention_states,
            media_mask=media_mask, cross_attention_outputs=collected, **kwargs,
        )
        if collected:
            self._list_cross_attention(out, collected, selection)
        return MultimodalCausalLMOutputWithPast(**out, image_outputs=image)

    def _media_states(self, input_ids, pixel_values, aspect_ratio_ids, aspect_ratio_mask, cross_attention_states,
                      batch: int):
        """(the image tower's output (image_outputs) or None, the projected image tokens (B, images * tiles * tokens,
        text hidden) or None): from pixels, or from cross_attention_states given in our layout or transformers'
        (B * images * tiles, tokens, text hidden)."""
        if pixel_values is not None:
            if aspect_ratio_ids is None:
                raise ValueError("pixel_values need aspect_ratio_ids (and aspect_ratio_mask), as the processor returns")
            self._check_image_tokens(input_ids, aspect_ratio_ids)
            image = self.get_image_features(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
            return image, image.pooler_output.flatten(1, 3)
        if cross_attention_states is not None and len(cross_attention_states) != batch:
            if len(cross_attention_states) % batch:
                raise ValueError(f"cross_attention_states hold {len(cross_attention_states)} rows for a batch of "
                                 f"{batch}: expected (B, images * tiles * tokens, hidden) or (B * images * tiles, "
                                 "tokens, hidden)")
            D = cross_attention_states.shape[-1]
            cross_attention_states = cross_attention_states.reshape(batch, -1, D)  # transformers' layout, tile-major
        return None, cross_attention_states

    def _cross_attention_collector(self, kwargs: dict):
        """(what the cross-attention blocks hand back for this call: {"hidden_states": [], "attentions": []} with the
        keys asked for, or None; the hidden-state indices asked for, or None). The flags come from the call, else the
        config, and go to the language model explicitly; a selection of hidden states by index is applied once the
        blocks' entries are in place, so the language model returns them all."""
        flags = {key: kwargs[f"output_{key}"] if f"output_{key}" in kwargs else getattr(self.config, f"output_{key}")
                 for key in ("hidden_states", "attentions")}  # the config read (microseconds) only when needed
        if not any(flags.values()):
            return None, None
        selection = selected_hidden_states(flags["hidden_states"])
        kwargs.update({f"output_{key}": bool(flag) for key, flag in flags.items()})
        return {key: [] for key, flag in flags.items() if flag}, selection

    def _list_cross_attention(self, out, collected: dict, selection) -> None:
        """Put the cross-attention blocks' outputs (and eager weights) into out.hidden_states (out.attentions) as
        entries of their own, where transformers' Mllama lists its cross-attention layers: config.cross_attention_layers
        are their positions in the whole stack. Blocks that did not run (no images) have no entries, as there."""
        positions = self.config.cross_attention_layers
        for key, offset in (("hidden_states", 1), ("attentions", 0)):  # hidden_states[0]: the embeddings
            entries, extra = out.get(key), collected.get(key, [])
            if entries is None or len(extra) != len(positions) or any(e is None for e in extra):
                continue
            entries = list(entries)
            for position, entry in zip(positions, extra):
                entries.insert(position + offset, entry)
            if key == "hidden_states" and selection is not None:
                n = len(entries)
                chosen = {i % n for i in selection if -n <= i < n}
                entries = [e if i in chosen else None for i, e in enumerate(entries)]
            out[key] = tuple(entries)

    def media_mask(self, cross_attention_mask: torch.Tensor, seq_len: int, cache) -> torch.Tensor:
        """(B, T, images, tiles) 1/0 tile mask -> boolean (B, T, images * tiles * tokens) over the image tokens. A mask
        longer than the input (a forward call with a cache) is cut to the rows of the new tokens."""
        tower = self.vision_model
        if cross_attention_mask.ndim != 4 or cross_attention_mask.shape[-1] != tower.max_num_tiles:
            raise ValueError(f"cross_attention_mask must be (batch, text tokens, images, {tower.max_num_tiles} tiles),"
                             f" got {tuple(cross_attention_mask.shape)}")
        if cross_attention_mask.shape[1] != seq_len:
            past = cache.get_seq_length() if cache is not None else 0
            cross_attention_mask = cross_attention_mask[:, past : past + seq_len]
        B, T, I, tiles = cross_attention_mask.shape
        expanded = cross_attention_mask.bool()[..., None].expand(B, T, I, tiles, tower.num_positions)
        return expanded.reshape(B, T, I * tiles * tower.num_positions)

    def _check_labels(self, labels: torch.Tensor) -> None:
        """Targets must be ids the output layer predicts: the image token (a learnable id) is not one of them."""
        predicted = self.get_output_embeddings().out_features  # also right for a quantized layer
        high = int(labels.max()) if labels.numel() else -100
        if high >= predicted:
            raise ValueError(f"labels hold id {high}, but the output layer predicts ids 0..{predicted - 1}: the image "
                             f"token ({self.config.image_token_index}) cannot be a target; set its labels to -100")

    def _check_image_tokens(self, input_ids, aspect_ratio_ids):
        """One image token per real image (aspect ratio id > 0) in every sample."""
        if input_ids is None:
            return
        tokens = (input_ids == self.config.image_token_index).sum(-1).tolist()
        images = [sum(i > 0 for i in sample) for sample in aspect_ratio_ids.tolist()]
        if tokens != images:
            raise ValueError(f"each image needs one image token (id {self.config.image_token_index}): the samples have "
                             f"{tokens} image tokens but {images} images; build the prompts with the processor")

    def prepare_inputs_for_generation(self, input_ids=None, next_sequence_length=None, inputs_embeds=None,
                                      pixel_values=None, aspect_ratio_ids=None, aspect_ratio_mask=None,
                                      cross_attention_mask=None, use_cache=True, is_first_iteration=False, **kwargs):
        """Images only at prefill (their keys/values are cached then); the mask cut to the tokens of this step."""
        inputs = super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, inputs_embeds=inputs_embeds, use_cache=use_cache,
            is_first_iteration=is_first_iteration, **kwargs,
        )
        if is_first_iteration or not use_cache:
            inputs.update(pixel_values=pixel_values, aspect_ratio_ids=aspect_ratio_ids,
                          aspect_ratio_mask=aspect_ratio_mask)
        if cross_attention_mask is not None:
            if input_ids is not None and input_ids.shape[1] > cross_attention_mask.shape[1]:  # text added after it
                extra = input_ids.shape[1] - cross_attention_mask.shape[1]
                cross_attention_mask = torch.cat([cross_attention_mask, cross_attention_mask[:, -1:].repeat_interleave(
                    extra, dim=1)], dim=1)
            ids = inputs.get("input_ids")
            step = (ids if ids is not None else inputs["inputs_embeds"]).shape[1]
            inputs["cross_attention_mask"] = cross_attention_mask[:, -step:]
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder, **kwargs):
        """A generated token sees the images its predecessor saw: repeat the last row of the mask."""
        mask = model_kwargs.get("cross_attention_mask")
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder, **kwargs)
        if mask is not None:
            model_kwargs["cross_attention_mask"] = torch.cat([mask, mask[:, -1:]], dim=1)
        return model_kwargs


def check_image_inputs(config: VlmhubMllamaVisionConfig, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
    """Validate the processor outputs; returns aspect_ratio_mask (built from the ids when None)."""
    tiles, size = config.max_num_tiles, config.image_size
    if pixel_values.ndim != 6 or pixel_values.shape[2:] != (tiles, config.num_channels, size, size):
        raise ValueError(f"pixel_values must be (batch, images, {tiles} tiles, {config.num_channels}, {size}, {size}),"
                         f" got {tuple(pixel_values.shape)}")
    if aspect_ratio_ids.shape != pixel_values.shape[:2]:
        raise ValueError(f"aspect_ratio_ids must be (batch, images) = {tuple(pixel_values.shape[:2])}, "
                         f"got {tuple(aspect_ratio_ids.shape)}")
    ratios, ids = config.supported_aspect_ratios, aspect_ratio_ids.tolist()  # a few ints: checked in Python
    if not all(0 <= i <= len(ratios) for sample in ids for i in sample):
        raise ValueError(f"aspect_ratio_ids must lie in 0..{len(ratios)} (0 = no image), got {ids}")
    counts = [1] + [r * c for r, c in ratios]
    expected = [[[t < counts[i] for t in range(tiles)] for i in sample] for sample in ids]  # (B, I, tiles)
    if aspect_ratio_mask is None:
        expected = torch.tensor(expected, dtype=torch.long, device=aspect_ratio_ids.device)
        return expected.reshape(*aspect_ratio_ids.shape, tiles)  # also with no images
    if aspect_ratio_mask.bool().tolist() != expected:
        raise ValueError(
            f"aspect_ratio_mask {aspect_ratio_mask.tolist()} does not match aspect_ratio_ids {ids}:"
            f" id k enables the first rows*cols tiles of grid supported_aspect_ratios[k-1] (id 0, no image: 1 tile)"
        )
    return aspect_ratio_mask
