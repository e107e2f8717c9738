"""Connectors: modules that turn vision features into what the language model consumes.

Interface: `forward(features (B, N, Dv), mask=None) -> (B, M, Dt)`; gated connectors start with gates at zero.
"""

from .projector import Projector, parse_projector_type, pool_patch_grid
from .qformer import QFormer, QFormerLayer, stage1_attention_mask
from .abstractor import Abstractor, AbstractorLayer, SwiGLUFeedForward
from .gated_cross_attention import (
    DecoderLayerWithCrossAttention,
    GatedCrossAttentionLayer,
    GatedMLP,
    insert_cross_attention,
)
from .perceiver import PerceiverLayer, PerceiverResampler
from .tome import TokenMerger, bipartite_soft_matching, merge_tokens
