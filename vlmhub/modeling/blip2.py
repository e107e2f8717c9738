"""BLIP-2: EVA ViT (the shared ViT, q/v bias) -> ln_vision -> Q-Former -> linear -> any causal LM (soft prompt).

`VlmhubBlip2ForConditionalGeneration` has the inputs and outputs of transformers' Blip2ForConditionalGeneration
with a decoder-only LM: input_ids hold `num_query_tokens` image tokens per image (the processor expands them),
whose embeddings are replaced by the projected query outputs. `VlmhubBlip2ForImageTextRetrieval` is the stage-1
model: contrastive (ITC, max over queries), matching (ITM) and captioning (ITG) heads on the Q-Former; the
stage-1 losses are in `vlmhub.train.objectives`.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.blip2 import VlmhubBlip2Config, VlmhubBlip2Stage1Config
from .blocks import VisionTransformer
from .blocks.bert import BertLMHead
from .connectors.qformer import QFormer, stage1_attention_mask
from .language_model import LanguageModelMixin, pre_encoded_images
from .pretrained import VlmhubPreTrainedModel


@dataclass
class Blip2CausalLMOutput(ModelOutput):
    """The language model's outputs plus the soft prompt (image_hidden_states: (images, queries, text width)), and
    transformers' BLIP-2 fields: the image tower's and the Q-Former's outputs (None without images, or without a
    Q-Former) and the language model's whole output."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    image_hidden_states: torch.FloatTensor | None = None
    vision_outputs: BaseModelOutputWithPooling | None = None
    qformer_outputs: BaseModelOutputWithPooling | None = None
    language_model_outputs: ModelOutput | None = None


@dataclass
class Blip2RetrievalOutput(ModelOutput):
    """ITM: logits_per_image (B, 2) [no match, match]. ITC: logits_per_image (images, texts) = max over queries of
    the cosine similarity (no temperature), logits_per_text its transpose."""

    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


class VlmhubBlip2PreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubBlip2Stage1Config
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings", "QFormerLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, QFormer):
            init.normal_(module.query_tokens, std=module.config.initializer_range)
        if isinstance(module, VlmhubBlip2ForImageTextRetrieval):
            init.constant_(module.temp, self.config.temperature_init_value)


class Blip2VisionEncoder(nn.Module):
    """The image side shared by every BLIP-2-based model: ViT tokens (CLS included) -> ln_vision -> Q-Former."""

    def __init__(self, config: VlmhubBlip2Stage1Config):
        super().__init__()
        self.vision_model = VisionTransformer(config.vision_config)
        self.ln_vision = nn.LayerNorm(config.vision_config.hidden_size, eps=config.vision_layernorm_eps)

    def forward(self, pixel_values, interpolate_pos_encoding=False) -> torch.Tensor:
        """(B, 3, H, W) -> image embeds (B, 1 + patches, vision width)."""
        return self.ln_vision(self.vision_model(pixel_values, interpolate_pos_encoding).last_hidden_state)


class ImageSoftPromptModel(LanguageModelMixin, VlmhubBlip2PreTrainedModel, GenerationMixin):
    """A causal LM whose image tokens are replaced by `get_image_features(pixel_values)` (B, image tokens, text width).

    Subclasses build `language_model` and define get_image_features and num_image_tokens (BLIP-2, MiniGPT-4)."""

    main_input_name = "input_ids"

    @property
    def num_image_tokens(self) -> int:
        raise NotImplementedError

    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                           **kwargs) -> BaseModelOutputWithVisionQformerOutputs:
        """(B, 3, H, W) -> `image_outputs`: pooler_output is the soft prompt (B, num_image_tokens, text width)."""
        raise NotImplementedError

    def image_outputs(self, image_embeds, query_output, soft_prompt) -> BaseModelOutputWithVisionQformerOutputs:
        """What get_image_features returns, as transformers' BLIP-2 does: the tower's tokens after ln_vision
        (last_hidden_state), the soft prompt (pooler_output), and the tower's and the Q-Former's outputs, each with
        its first token as pooler_output (the tower's normed once more, as transformers does; no Q-Former: None)."""
        vision = BaseModelOutputWithPooling(last_hidden_state=image_embeds,
                                            pooler_output=self.vision.ln_vision(image_embeds[:, 0]))
        qformer = None if query_output is None else BaseModelOutputWithPooling(last_hidden_state=query_output,
                                                                               pooler_output=query_output[:, 0])
        return BaseModelOutputWithVisionQformerOutputs(last_hidden_state=image_embeds, pooler_output=soft_prompt,
                                                       vision_outputs=vision, qformer_outputs=qformer)

    def _check_image_token_id(self) -> None:
        if self.config.image_token_id is None:
            raise ValueError("config.image_token_id is not set: the model cannot tell where the image goes")

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # the name before transformers 5.24
    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                inputs_embeds=None, labels=None, interpolate_pos_encoding=False, logits_to_keep=0,
                mm_encoder_outputs: dict | None = None, **kwargs) -> Blip2CausalLMOutput:
        """mm_encoder_outputs: {"image": get_image_features(...)}, images encoded earlier (transformers' generate
        encodes them once this way)."""
        image = pre_encoded_images(pixel_values, mm_encoder_outputs)
        if pixel_values is not None or image is not None:
            self._check_image_token_id()
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, interpolate_pos_encoding)
        image_features = None if image is None else image.pooler_output
        out = self.run_language_model(input_ids, inputs_embeds, image_features, attention_mask=attention_mask,
                                      position_ids=position_ids, cache=cache, labels=labels,
                                      logits_to_keep=logits_to_keep, **kwargs)
        return Blip2CausalLMOutput(loss=out.loss, logits=out.logits, cache=out.cache,
                                   hidden_states=out.hidden_states, attentions=out.attentions,
                                   image_hidden_states=image_features, language_model_outputs=out,
                                   vision_outputs=None if image is None else image.vision_outputs,
                                   qformer_outputs=None if image is None else image.qformer_outputs)

    def generate(self, input_ids=None, pixel_values=None, attention_mask=None, mm_encoder_outputs=None,
                 interpolate_pos_encoding=False, **kwargs):
        """As transformers' Blip2ForConditionalGeneration.generate: the prompt's embeddings, the soft prompt at its
        image tokens, go to the language model's generate (with this model's generation_config), so that decoding
        steps run the bare language model. With images but no prompt, the prompt is the image tokens and BOS.
        Returns the prompt's ids followed by the new tokens; mm_encoder_outputs as in forward."""
        image = pre_encoded_images(pixel_values, mm_encoder_outputs)
        if image is None and pixel_values is not None:
            image = self.get_image_features(pixel_values, interpolate_pos_encoding)
        if image is not None:
            self._check_image_token_id()
            if input_ids is None and "inputs_embeds" not in kwargs:
                prompt = [self.config.image_token_id] * self.num_image_tokens + [self.config.text_config.bos_token_id]
                soft_prompt = image.pooler_output
                input_ids = torch.tensor([prompt], device=soft_prompt.device).repeat(len(soft_prompt), 1)
            kwargs["inputs_embeds"] = self.embed_with_images(input_ids, kwargs.get("inputs_embeds"), image.pooler_output)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        if "generation_config" not in kwargs:  # this model's generation settings (suppress_tokens, ...) and the call's
            generation_config = copy.deepcopy(self.generation_config)
            kwargs = generation_config.update(**kwargs) | {"generation_config": generation_config}
        return self.language_model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class VlmhubBlip2ForConditionalGeneration(ImageSoftPromptModel):
    config_class = VlmhubBlip2Config
    # What training stage 1 trains (and stage 2 trains in full beside LoRA): the Q-Former and its projection.
    connector_modules = ("qformer", "language_projection")

    def __init__(self, config: VlmhubBlip2Config):
        super().__init__(config)
        self.vision = Blip2VisionEncoder(config)
        self.qformer = QFormer(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_query_tokens

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False,
                           **kwargs) -> BaseModelOutputWithVisionQformerOutputs:
        """(B, 3, H, W) -> `image_outputs`; the soft prompt (pooler_output) is (B, num_query_tokens, text width)."""
        image_embeds = self.vision(pixel_values, interpolate_pos_encoding)  # (B, 1 + N, Dv)
        query_output = self.qformer(image_embeds)  # (B, Q, Dq)
        return self.image_outputs(image_embeds, query_output, self.language_projection(query_output))


class VlmhubBlip2ForImageTextRetrieval(VlmhubBlip2PreTrainedModel):
    """BLIP-2 stage 1: image query features, text [CLS] features, matching and captioning heads."""

    main_input_name = "pixel_values"
    _tied_weights_keys = {"lm_head.decoder.weight": "qformer.word_embeddings.weight"}

    def __init__(self, config: VlmhubBlip2Stage1Config):
        super().__init__(config)
        if not config.qformer_config.use_text_input:
            raise ValueError("the stage-1 model needs the Q-Former's text path: set qformer_config.use_text_input=True")
        Dq, E = config.qformer_config.hidden_size, config.image_text_hidden_size
        self.vision = Blip2VisionEncoder(config)
        self.qformer = QFormer(config.qformer_config)
        self.vision_proj = nn.Linear(Dq, E)
        self.text_proj = nn.Linear(Dq, E)
        self.itm_head = nn.Linear(Dq, 2)
        self.lm_head = BertLMHead(config.qformer_config)
        self.temp = nn.Parameter(torch.tensor(config.temperature_init_value))
        self.post_init()

    def get_input_embeddings(self):
        return self.qformer.word_embeddings

    def set_input_embeddings(self, value):
        self.qformer.word_embeddings = value

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False):
        """-> (image_embeds (B, N, Dv), query_output (B, Q, Dq), normalized query features (B, Q, E))."""
        image_embeds = self.vision(pixel_values, interpolate_pos_encoding)
        query_output = self.qformer(image_embeds)
        return image_embeds, query_output, nn.functional.normalize(self.vision_proj(query_output), dim=-1)

    def get_text_features(self, input_ids, attention_mask=None):
        """-> (text states (B, T, Dq), normalized [CLS] feature (B, E)); text only, bidirectional."""
        text_embeds = self.qformer.encode(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return text_embeds, nn.functional.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def itm_logits(self, image_embeds, input_ids, attention_mask=None) -> torch.Tensor:
        """Matching logits (B, 2) of paired rows: queries and text attend to each other, averaged over the queries."""
        states = self.qformer.encode(image_embeds, input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.itm_head(states[:, : self.config.num_query_tokens]).mean(dim=1)

    def itg_logits(self, image_embeds, input_ids, attention_mask=None) -> torch.Tensor:
        """Captioning logits (B, T, vocab) at the text positions under the ITG mask (queries never see text)."""
        Q = self.config.num_query_tokens
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        self_mask = stage1_attention_mask("itg", Q, mask)
        states = self.qformer.encode(image_embeds, input_ids=input_ids, self_attention_mask=self_mask).last_hidden_state
        return self.lm_head(states[:, Q:])

    @can_return_tuple
    def forward(self, pixel_values, input_ids, attention_mask=None, use_image_text_matching_head=False,
                interpolate_pos_encoding=False, **kwargs) -> Blip2RetrievalOutput:
        image_embeds, _, image_feats = self.get_image_features(pixel_values, interpolate_pos_encoding)
        if use_image_text_matching_head:
            logits = self.itm_logits(image_embeds, input_ids, attention_mask)
            return Blip2RetrievalOutput(logits_per_image=logits, logits_per_text=logits.t())
        _, text_feat = self.get_text_features(input_ids, attention_mask)
        sim = torch.einsum("iqe,te->itq", image_feats, text_feat).amax(dim=-1)  # (images, texts)
        return Blip2RetrievalOutput(logits_per_image=sim, logits_per_text=sim.t(), image_embeds=image_feats,
                                    text_embeds=text_feat)
