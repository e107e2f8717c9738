from .attention import Attention, eager_attention
from .mlp import MLP
from .vit import Encoder, EncoderLayer, VisionEmbeddings, VisionTransformer

__all__ = ["MLP", "Attention", "Encoder", "EncoderLayer", "VisionEmbeddings", "VisionTransformer", "eager_attention"]
