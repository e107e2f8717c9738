"""Placing image features into the text embeddings at the image tokens: one pure function for every family."""

from collections.abc import Sequence

import torch


def merge_image_features(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor | Sequence[torch.Tensor],
    image_token_id: int,
) -> torch.Tensor:
    """Return inputs_embeds (B, T, D) with the rows at `input_ids == image_token_id` replaced, in order, by
    image_features (N, D) or (images, tokens, D), or a sequence of per-image (tokens, D) tensors (joined here, so the
    joined copy lives only while merging). Raises if the number of image tokens and feature rows differ."""
    D = inputs_embeds.shape[-1]
    if not isinstance(image_features, torch.Tensor):
        image_features = [f.reshape(-1, D) for f in image_features]
        image_features = image_features[0] if len(image_features) == 1 else torch.cat(image_features)
    features = image_features.reshape(-1, D)
    mask = input_ids == image_token_id  # (B, T)
    n_tokens, n_features = int(mask.sum()), features.shape[0]
    if n_tokens != n_features:
        raise ValueError(
            f"Image features and image tokens do not match: the text has {n_tokens} image tokens (id {image_token_id}) "
            f"but the images give {n_features} feature vectors; build the prompt with the processor, which expands "
            f"each image placeholder into the right number of tokens"
        )
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds), features.to(inputs_embeds.dtype))
