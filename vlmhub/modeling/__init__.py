from .clip import CLIPModel, CLIPPreTrainedModel, CLIPTextModel, CLIPVisionModel
from .vit import ViTForImageClassification, ViTModel, ViTPreTrainedModel

__all__ = [
    "CLIPModel",
    "CLIPPreTrainedModel",
    "CLIPTextModel",
    "CLIPVisionModel",
    "ViTForImageClassification",
    "ViTModel",
    "ViTPreTrainedModel",
]
