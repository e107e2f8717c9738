"""Task helpers built on the public models and processors."""

import torch


@torch.inference_mode()
def zero_shot_classify(model, processor, images, labels: list[str], template: str = "a photo of a {}.") -> torch.Tensor:
    """Probabilities (images, labels) that each image shows each label, CLIP-style: the softmax over the labels of
    the image-text logits, with every label written into `template` as CLIP's zero-shot evaluation does."""
    if not labels:
        raise ValueError("zero_shot_classify needs at least one label")
    images = images if isinstance(images, (list, tuple)) else [images]
    inputs = processor(text=[template.format(label) for label in labels], images=images, padding=True, return_tensors="pt")
    inputs = inputs.to(model.device)
    return model(**inputs).logits_per_image.softmax(dim=-1)


def cross_attention_tokens(config, inputs) -> int | None:
    """Vectors the gated cross-attention reads for the first image of `inputs` (a processor's output), where the text
    keeps a single image token: Flamingo's Perceiver latents; Mllama's tokens of every tile that image fills (patches
    and class token, without the padding to a multiple of 8). None for a family that puts its visual tokens in the
    text (count its image tokens instead)."""
    if config.model_type == "vlmhub_flamingo":
        return config.num_latents
    if config.model_type == "vlmhub_mllama":
        return int(inputs["aspect_ratio_mask"][0, 0].sum()) * config.vision_config.num_positions
    return None
