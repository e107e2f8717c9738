"""CLIP: the shared ViT as image tower, the shared encoder (causal) as text tower, two projections, a temperature.

Same inputs and outputs as transformers' VlmhubCLIPModel / VlmhubCLIPVisionModel / VlmhubCLIPTextModel.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.utils.generic import can_return_tuple

from ..configuration.clip import VlmhubCLIPConfig, VlmhubCLIPTextConfig, VlmhubCLIPVisionConfig
from .blocks import Encoder, VisionTransformer
from .blocks.attention import additive_mask
from .pretrained import VlmhubPreTrainedModel
from .vit import _flag


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a (texts, images) similarity matrix whose diagonal holds the matching pairs."""
    target = torch.arange(len(logits_per_text), device=logits_per_text.device)
    return (nn.functional.cross_entropy(logits_per_text, target) + nn.functional.cross_entropy(logits_per_text.t(), target)) / 2


class VlmhubCLIPPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubCLIPConfig
    base_model_prefix = "clip"
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings", "CLIPTextEmbeddings"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VlmhubCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, config: VlmhubCLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids, position_ids=None):
        T, max_T = input_ids.shape[-1], self.position_embedding.num_embeddings
        if T > max_T:
            raise ValueError(f"Sequence length {T} exceeds max_position_embeddings {max_T}; truncate the text")
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPTextTransformer(nn.Module):
    """tokens -> embeddings -> causal encoder -> final_layer_norm; pooled = the end-of-text token's state."""

    def __init__(self, config: VlmhubCLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = Encoder(config, is_causal=True)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, attention_mask=None, position_ids=None, output_hidden_states=False, output_attentions=False):
        if input_ids is None:
            raise ValueError("You have to specify input_ids")
        x = self.embeddings(input_ids, position_ids)
        mask = None  # no padding: the layers' causal attention needs no mask (SDPA's is_causal path)
        if attention_mask is not None and not attention_mask.bool().all():
            mask = additive_mask(_causal_padding_mask(attention_mask, x.shape[1]), x.dtype)  # built once, not per layer
        out = self.encoder(x, mask, output_hidden_states, output_attentions)
        last = self.final_layer_norm(out.last_hidden_state)
        if self.config.pooling == "argmax":
            eos_index = input_ids.argmax(-1)
        else:
            eos_index = (input_ids == self.config.eos_token_id).int().argmax(-1)  # first end token
        pooled = last[torch.arange(len(last), device=last.device), eos_index]
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=out.hidden_states, attentions=out.attentions
        )


def _causal_padding_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) 1/0 padding mask -> (B, 1, T, T) boolean: query i sees key j <= i that is not padding."""
    causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


class VlmhubCLIPTextModel(VlmhubCLIPPreTrainedModel):
    config_class = VlmhubCLIPTextConfig
    input_modalities = ("text",)

    def __init__(self, config: VlmhubCLIPTextConfig):
        super().__init__(config)
        self.text_model = CLIPTextTransformer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.embeddings.token_embedding

    def set_input_embeddings(self, value):
        self.text_model.embeddings.token_embedding = value

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, output_hidden_states=None, output_attentions=None, **kwargs):
        return self.text_model(
            input_ids,
            attention_mask,
            position_ids,
            _flag(output_hidden_states, self.config.output_hidden_states),
            _flag(output_attentions, self.config.output_attentions),
        )


class VlmhubCLIPVisionModel(VlmhubCLIPPreTrainedModel):
    config_class = VlmhubCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: VlmhubCLIPVisionConfig):
        super().__init__(config)
        self.vision_model = VisionTransformer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(self, pixel_values=None, interpolate_pos_encoding=False, output_hidden_states=None, output_attentions=None, **kwargs):
        return self.vision_model(
            pixel_values,
            interpolate_pos_encoding,
            _flag(output_hidden_states, self.config.output_hidden_states),
            _flag(output_attentions, self.config.output_attentions),
        )


class VlmhubCLIPModel(VlmhubCLIPPreTrainedModel):
    def __init__(self, config: VlmhubCLIPConfig):
        super().__init__(config)
        self.text_model = CLIPTextTransformer(config.text_config)
        self.vision_model = VisionTransformer(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_input_embeddings(self):
        return self.text_model.embeddings.token_embedding

    @can_return_tuple
    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs) -> BaseModelOutputWithPooling:
        """The text tower's outputs with pooler_output projected into the joint space (as transformers 5 returns)."""
        out = self.text_model(input_ids, attention_mask, position_ids, **_output_flags(self.config.text_config, kwargs))
        out.pooler_output = self.text_projection(out.pooler_output)
        return out

    @can_return_tuple
    def get_image_features(self, pixel_values, interpolate_pos_encoding=False, **kwargs) -> BaseModelOutputWithPooling:
        """The image tower's outputs with pooler_output projected into the joint space (as transformers 5 returns)."""
        out = self.vision_model(pixel_values, interpolate_pos_encoding, **_output_flags(self.config.vision_config, kwargs))
        out.pooler_output = self.visual_projection(out.pooler_output)
        return out

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        position_ids=None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        **kwargs,
    ) -> CLIPOutput:
        vision = self.get_image_features(pixel_values, interpolate_pos_encoding, **kwargs)
        text = self.get_text_features(input_ids, attention_mask, position_ids, **kwargs)
        image_embeds = nn.functional.normalize(vision.pooler_output, dim=-1)
        text_embeds = nn.functional.normalize(text.pooler_output, dim=-1)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()  # (texts, images)
        return CLIPOutput(
            loss=contrastive_loss(logits_per_text) if return_loss else None,
            logits_per_image=logits_per_text.t(),
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text,
            vision_model_output=vision,
        )


def _output_flags(config, kwargs) -> dict:
    return {
        "output_hidden_states": _flag(kwargs.get("output_hidden_states"), config.output_hidden_states),
        "output_attentions": _flag(kwargs.get("output_attentions"), config.output_attentions),
    }
