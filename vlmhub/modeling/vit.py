"""ViT: the shared vision tower, a tanh pooler on the class token, and an image-classification head.

Same inputs and outputs as transformers' VlmhubViTModel / VlmhubViTForImageClassification.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils.generic import can_return_tuple

from ..configuration.vit import VlmhubViTConfig
from .blocks import VisionTransformer
from .pretrained import VlmhubPreTrainedModel


class VlmhubViTPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)


class ViTPooler(nn.Module):
    def __init__(self, config: VlmhubViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.pooler_output_size)
        self.act = ACT2FN[config.pooler_act]

    def forward(self, last_hidden_state):
        return self.act(self.dense(last_hidden_state[:, 0]))


class VlmhubViTModel(VlmhubViTPreTrainedModel):
    def __init__(self, config: VlmhubViTConfig, add_pooling_layer: bool | None = None):
        super().__init__(config)
        self.vision_model = VisionTransformer(config)
        add_pooling_layer = config.add_pooling_layer if add_pooling_layer is None else add_pooling_layer
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.vision_model.embeddings.patch_embedding

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        interpolate_pos_encoding: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if bool_masked_pos is not None:  # transformers' masked-image-modeling input: refused, not ignored
            raise ValueError("bool_masked_pos (masked image modeling) is not supported: the tower has no mask token")
        out = self.vision_model(
            pixel_values,
            interpolate_pos_encoding=bool(interpolate_pos_encoding),
            output_hidden_states=_flag(output_hidden_states, self.config.output_hidden_states),
            output_attentions=_flag(output_attentions, self.config.output_attentions),
        )
        out.pooler_output = self.pooler(out.last_hidden_state) if self.pooler is not None else None
        return out


class VlmhubViTForImageClassification(VlmhubViTPreTrainedModel):
    def __init__(self, config: VlmhubViTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = VlmhubViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        out = self.vit(pixel_values, interpolate_pos_encoding, output_hidden_states, output_attentions)
        logits = self.classifier(out.last_hidden_state[:, 0])
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions)


def _flag(value: bool | None, default: bool | None) -> bool:
    """A per-call output flag, falling back to the config's."""
    return bool(default) if value is None else value
