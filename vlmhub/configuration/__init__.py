from .clip import VlmhubCLIPConfig, VlmhubCLIPTextConfig, VlmhubCLIPVisionConfig
from .common import VisionTowerConfig
from .vit import VlmhubViTConfig

__all__ = ["VisionTowerConfig", "VlmhubCLIPConfig", "VlmhubCLIPTextConfig", "VlmhubCLIPVisionConfig", "VlmhubViTConfig"]
