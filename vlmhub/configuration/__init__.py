from .clip import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from .common import VisionTowerConfig
from .vit import ViTConfig

__all__ = ["CLIPConfig", "CLIPTextConfig", "CLIPVisionConfig", "VisionTowerConfig", "ViTConfig"]
