"""What every family built around a transformers causal LM (`self.language_model`) shares: the embedding accessors
transformers expects, and the soft-prompt core (embed, put image features at the image tokens, run the LM)."""

from .merge import merge_image_features


class LanguageModelAccessors:
    """The embedding accessors transformers reads (resize_token_embeddings, tying, peft) for models holding
    `self.language_model`, a transformers causal LM."""

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.language_model.set_output_embeddings(value)


class LanguageModelMixin(LanguageModelAccessors):
    """For models holding `self.language_model` (a transformers causal LM) and `config.image_token_id`."""

    def run_language_model(self, input_ids, inputs_embeds, image_features, **lm_kwargs):
        """Embed `input_ids` (or take `inputs_embeds`), replace the image tokens by `image_features` (rows in order: a
        tensor or a list of per-image tensors; None for text only) and run the language model with `lm_kwargs` (masks,
        cache, labels, ...)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds")
        if image_features is None:  # text only (every decode step): the language model embeds its ids itself
            return self.language_model(input_ids=input_ids, inputs_embeds=inputs_embeds, **lm_kwargs)
        return self.language_model(inputs_embeds=self.embed_with_images(input_ids, inputs_embeds, image_features),
                                   **lm_kwargs)

    def embed_with_images(self, input_ids, inputs_embeds, image_features):
        """The embeddings of `input_ids` (or `inputs_embeds`) with the image tokens' rows replaced by `image_features`
        (rows in order)."""
        if input_ids is None:
            raise ValueError("pixel_values need input_ids: the image tokens say where the image features go")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        return merge_image_features(inputs_embeds, input_ids, image_features, self.config.image_token_id)


def pre_encoded_images(pixel_values, mm_encoder_outputs: dict | None):
    """The image encoder output of transformers' `mm_encoder_outputs` ({"image": get_image_features(...)}: images
    encoded before the call, as its generate does once per prompt), or None; never together with pixel_values."""
    if mm_encoder_outputs is None:
        return None
    if pixel_values is not None:
        raise ValueError("pass pixel_values or mm_encoder_outputs (images encoded by get_image_features), not both")
    return mm_encoder_outputs.get("image")
