from .clip import VlmhubCLIPModel, VlmhubCLIPPreTrainedModel, VlmhubCLIPTextModel, VlmhubCLIPVisionModel
from .vit import VlmhubViTForImageClassification, VlmhubViTModel, VlmhubViTPreTrainedModel

__all__ = [
    "VlmhubCLIPModel",
    "VlmhubCLIPPreTrainedModel",
    "VlmhubCLIPTextModel",
    "VlmhubCLIPVisionModel",
    "VlmhubViTForImageClassification",
    "VlmhubViTModel",
    "VlmhubViTPreTrainedModel",
]
