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
