"""BLIP: the shared ViT and one BERT (every layer with cross-attention to the image) in three modes:
unimodal text encoder (no image, bidirectional), image-grounded encoder (cross-attention, for ITM), and
image-grounded causal decoder (captioning, first token [DEC]).

Same inputs and outputs as transformers' BlipForConditionalGeneration (logits, loss with label smoothing, generate)
and BlipForImageTextRetrieval (itm_score: ITM logits, or the ITC cosine similarity with use_itm_head=False).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.blip import VlmhubBlipConfig, VlmhubBlipTextConfig
from .blocks import VisionTransformer
from .blocks.bert import BertLayer, BertLMHead
from .pretrained import VlmhubPreTrainedModel


@dataclass
class BlipCaptioningOutput(ModelOutput):
    """image_embeds and last_hidden_state: both the image tower's tokens (B, 1 + N, Dv), as transformers returns."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    image_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class BlipRetrievalOutput(ModelOutput):
    """itm_score: (B, 2) matching logits, or (images, texts) cosine similarities of the [CLS] features (ITC).
    image_embeds and last_hidden_state: both the image tower's tokens (transformers fills the second)."""

    itm_score: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    question_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


def text_attention_mask(attention_mask, batch: int, length: int, past: int, causal: bool, device) -> torch.Tensor:
    """(B, 1, T, past + T) boolean: padding keys hidden; with `causal`, token i sees keys up to past + i."""
    S = past + length
    keys = attention_mask.bool() if attention_mask is not None else torch.ones(batch, S, dtype=torch.bool, device=device)
    if keys.shape[1] != S:
        raise ValueError(f"attention_mask covers {keys.shape[1]} tokens but the text (with its cache) has {S}")
    mask = keys[:, None, None, :]
    if causal:
        seen = torch.arange(S, device=device)[None, :] <= (past + torch.arange(length, device=device))[:, None]  # (T, S)
        mask = mask & seen[None, None]
    return mask


class BlipTextModel(nn.Module):
    """Word + position embeddings -> LayerNorm -> BertLayers (self-attention, cross-attention to the image, FFN)."""

    def __init__(self, config: VlmhubBlipTextConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # cache slots: the self-attention keys/values of layer i at i, its image keys/values at num_layers + i
        n = config.num_hidden_layers
        self.layers = nn.ModuleList(BertLayer(config, has_cross_attention=True, layer_idx=i, cross_attention_slot=n + i)
                                    for i in range(n))
        self.gradient_checkpointing = False

    def forward(self, input_ids, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                is_decoder=False, cache=None) -> BaseModelOutputWithPast:
        B, T = input_ids.shape
        if cache is not None and cache.is_compileable:
            raise ValueError("BLIP's text decoder needs a cache that grows with the text (DynamicCache, the default); "
                             "fixed-size caches such as cache_implementation='static' are not supported (nor are they "
                             "in transformers' BLIP)")
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > self.config.max_position_embeddings:
            raise ValueError(f"text of {past + T} tokens exceeds max_position_embeddings {self.config.max_position_embeddings}")
        positions = torch.arange(past, past + T, device=input_ids.device)
        x = self.dropout(self.layernorm(self.word_embeddings(input_ids) + self.position_embeddings(positions)))
        mask = text_attention_mask(attention_mask, B, T, past, is_decoder, x.device)
        cross_mask = encoder_attention_mask.bool()[:, None, None, :] if encoder_attention_mask is not None else None
        for layer in self.layers:
            x, _ = layer(x, mask, encoder_hidden_states, cross_mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=x, cache=cache)


class VlmhubBlipPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubBlipConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings", "BertLayer"]


class VlmhubBlipForConditionalGeneration(VlmhubBlipPreTrainedModel, GenerationMixin):
    """Captioning: ViT tokens -> the causal text decoder's cross-attention -> BertLMHead."""

    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.decoder.weight": "text_decoder.word_embeddings.weight"}

    def __init__(self, config: VlmhubBlipConfig):
        super().__init__(config)
        self.vision_model = VisionTransformer(config.vision_config)
        self.text_decoder = BlipTextModel(config.text_config)
        self.lm_head = BertLMHead(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_decoder.word_embeddings

    def set_input_embeddings(self, value):
        self.text_decoder.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head.decoder

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name before transformers 5.24
    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None, cache=None,
                image_embeds=None, use_cache=None, interpolate_pos_encoding=False, **kwargs) -> BlipCaptioningOutput:
        if image_embeds is None:
            if pixel_values is None:
                raise ValueError("pass pixel_values (or image_embeds): BLIP captions are grounded in an image")
            image_embeds = self.vision_model(pixel_values, interpolate_pos_encoding).last_hidden_state  # (B, 1+N, Dv)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config.text_config)
        states = self.text_decoder(input_ids, attention_mask, image_embeds, is_decoder=True,
                                   cache=cache).last_hidden_state
        logits = self.lm_head(states)
        loss = None
        if labels is not None:  # next-token prediction with the paper's label smoothing
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                               ignore_index=-100, label_smoothing=self.config.text_config.label_smoothing)
        return BlipCaptioningOutput(loss=loss, logits=logits, cache=cache, image_embeds=image_embeds,
                                    last_hidden_state=image_embeds)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """Keep the image tokens for the later steps (generate drops pixel_values after the first)."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["image_embeds"] = outputs.image_embeds
        return model_kwargs

    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, **kwargs):
        """Caption from [DEC] (or continue a prompt, whose trailing [SEP] is dropped, as transformers does); stop at [SEP]."""
        text = self.config.text_config
        if input_ids is None:
            input_ids = torch.full((pixel_values.shape[0], 1), text.bos_token_id, device=pixel_values.device)
        else:
            input_ids = input_ids[:, :-1].clone()
            input_ids[:, 0] = text.bos_token_id
            attention_mask = attention_mask[:, :-1] if attention_mask is not None else None
        kwargs.setdefault("eos_token_id", text.sep_token_id)
        kwargs.setdefault("pad_token_id", text.pad_token_id)
        return super().generate(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, **kwargs)


class VlmhubBlipForImageTextRetrieval(VlmhubBlipPreTrainedModel):
    """ITM on the image-grounded encoder's [CLS] (use_itm_head=True) or ITC cosine similarity of the unimodal [CLS]."""

    main_input_name = "input_ids"

    def __init__(self, config: VlmhubBlipConfig):
        super().__init__(config)
        self.vision_model = VisionTransformer(config.vision_config)
        self.text_encoder = BlipTextModel(config.text_config)
        self.vision_proj = nn.Linear(config.vision_config.hidden_size, config.image_text_hidden_size)
        self.text_proj = nn.Linear(config.text_config.hidden_size, config.image_text_hidden_size)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_encoder.word_embeddings

    def set_input_embeddings(self, value):
        self.text_encoder.word_embeddings = value

    @can_return_tuple
    def forward(self, input_ids, pixel_values, use_itm_head=True, attention_mask=None, interpolate_pos_encoding=False,
                **kwargs) -> BlipRetrievalOutput:
        image_embeds = self.vision_model(pixel_values, interpolate_pos_encoding).last_hidden_state
        if use_itm_head:
            states = self.text_encoder(input_ids, attention_mask, image_embeds).last_hidden_state
            return BlipRetrievalOutput(itm_score=self.itm_head(states[:, 0]), image_embeds=image_embeds,
                                       question_embeds=states, last_hidden_state=image_embeds)
        states = self.text_encoder(input_ids, attention_mask).last_hidden_state
        image_feat = nn.functional.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        text_feat = nn.functional.normalize(self.text_proj(states[:, 0]), dim=-1)
        return BlipRetrievalOutput(itm_score=image_feat @ text_feat.t(), image_embeds=image_embeds,
                                   question_embeds=states, last_hidden_state=image_embeds)
