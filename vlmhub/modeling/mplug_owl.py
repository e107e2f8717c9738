"""mPLUG-Owl: shared ViT -> visual abstractor (learned queries + vit_eos) -> any transformers causal LM.

Each image becomes num_query_tokens + 1 soft-prompt vectors that replace as many image tokens in the text
(the processor expands every `<image>` to that count), so the sequence length never changes.
"""

import torch
from transformers import AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.mplug_owl import VlmhubMplugOwlConfig
from .blocks import VisionTransformer
from .connectors import Abstractor
from .language_model import LanguageModelMixin
from .pretrained import VlmhubPreTrainedModel


class VlmhubMplugOwlPreTrainedModel(VlmhubPreTrainedModel):
    config_class = VlmhubMplugOwlConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings", "AbstractorLayer"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Abstractor):
            std = self.config.abstractor_config.initializer_range
            init.trunc_normal_(module.query_tokens, std=std)
            init.trunc_normal_(module.vit_eos, std=std)


class VlmhubMplugOwlForConditionalGeneration(LanguageModelMixin, VlmhubMplugOwlPreTrainedModel, GenerationMixin):
    # What training stage 1 trains (and stage 2 trains in full beside LoRA): the visual abstractor.
    connector_modules = ("abstractor",)

    def __init__(self, config: VlmhubMplugOwlConfig):
        super().__init__(config)
        self.vision_model = VisionTransformer(config.vision_config)
        self.abstractor = Abstractor(config.abstractor_config, config.text_config.hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """pixel_values (images, 3, H, W) -> last_hidden_state (images, Q + 1, text width), the abstractor's tokens;
        pooler_output (images, abstractor width): the first query before visual_fc (the original's pooler)."""
        if pixel_values.ndim == 5:  # (images, 1, 3, H, W) from a batched processor
            pixel_values = pixel_values.flatten(0, 1)
        patches = self.vision_model(pixel_values).last_hidden_state  # (images, 1 + N, Dv), post-LayerNorm
        # through Abstractor.forward (not encode / vit_eos directly): offload hooks load the weights only there
        tokens, queries = self.abstractor(patches, return_queries=True)  # (images, Q + 1, Dt), (images, Q, D)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=queries[:, 0])

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
        **kwargs,
    ) -> LlavaCausalLMOutputWithPast:
        """labels at image tokens are ignored (-100) in the loss, as the original's non_media_mask does."""
        image = self.get_image_features(pixel_values) if pixel_values is not None else None
        image_features = None if image is None else image.last_hidden_state
        if labels is not None and input_ids is not None:
            labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
        out = self.run_language_model(
            input_ids, inputs_embeds, image_features, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, labels=labels, logits_to_keep=logits_to_keep, **kwargs,
        )
        return LlavaCausalLMOutputWithPast(loss=out.loss, logits=out.logits, cache=out.cache,
                                           hidden_states=out.hidden_states, attentions=out.attentions, image_outputs=image)
