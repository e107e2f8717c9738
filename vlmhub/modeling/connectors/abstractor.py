"""The visual abstractor of mPLUG-Owl (Ye et al. 2023): learned queries cross-attend to the image patches.

Each layer normalises the queries (norm1) and the patch features (normk), lets the queries attend to the
concatenation [queries; patches] (so a layer is self- and cross-attention in one softmax, Perceiver-style),
adds the attention output to the *normed* queries, then applies a SwiGLU feed-forward with a LayerNorm inside
(`w2(ffn_ln(silu(w1 x) * w3 x))`). After the layers `visual_fc` maps the queries to the language model's width
and a learned `vit_eos` vector is appended: every image becomes exactly num_query_tokens + 1 tokens.

Connector interface: `Abstractor(features (B, N, D), mask=None) -> (B, Q + 1, Dt)`.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput

from ..blocks.attention import Attention


class SwiGLUFeedForward(nn.Module):
    """w2(ffn_ln(silu(w1 x) * w3 x)): mPLUG-Owl's abstractor feed-forward, a SwiGLU with a LayerNorm before w2."""

    def __init__(self, hidden_size: int, intermediate_size: int, eps: float):
        super().__init__()
        self.w1 = nn.Linear(hidden_size, intermediate_size)
        self.w3 = nn.Linear(hidden_size, intermediate_size)
        self.ffn_ln = nn.LayerNorm(intermediate_size, eps=eps)
        self.w2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(nn.functional.silu(self.w1(x)) * self.w3(x)))


class AbstractorLayer(GradientCheckpointingLayer):
    """queries (B, Q, D), features (B, N, D) -> queries (B, Q, D)."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        D = config.hidden_size
        self.norm1 = nn.LayerNorm(D, eps=config.norm_eps)
        self.normk = nn.LayerNorm(D, eps=config.norm_eps)
        self.attention = Attention(config, hidden_size=D, num_heads=config.num_attention_heads,
                                   dropout=config.attention_dropout, layer_idx=layer_idx)
        self.norm2 = nn.LayerNorm(D, eps=config.norm_eps)
        self.mlp = SwiGLUFeedForward(D, config.intermediate_size, config.layer_norm_eps)

    def forward(self, queries, features, attention_mask=None, output_attentions=False):
        q = self.norm1(queries)
        context = torch.cat([q, self.normk(features)], dim=1)  # (B, Q + N, D): keys/values over queries and patches
        h, weights = self.attention(q, context=context, attention_mask=attention_mask, output_attentions=output_attentions)
        x = q + h  # the residual is the normed queries, as in the original
        del q, context, h  # not held while the MLP runs (peak memory)
        x = x + self.mlp(self.norm2(x))
        return x, weights


class Abstractor(nn.Module):
    """query_tokens (1, Q, D) -> `num_hidden_layers` AbstractorLayers over the image features -> visual_fc (D -> Dt),
    then vit_eos (1, 1, Dt) appended. `forward(..., return_queries=True)` also returns the queries before
    visual_fc (the original's pooler reads the first of them)."""

    def __init__(self, config, out_dim: int):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, D))
        self.layers = nn.ModuleList(AbstractorLayer(config, i) for i in range(config.num_hidden_layers))
        self.visual_fc = nn.Linear(D, out_dim)
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, out_dim))

    @property
    def num_output_tokens(self) -> int:
        return self.config.num_query_tokens + 1

    def encode(self, features: torch.Tensor, mask: torch.Tensor | None = None, output_hidden_states=False,
               output_attentions=False) -> BaseModelOutput:
        """features (B, N, D), mask (B, N) with 1/True = a real feature -> queries (B, Q, D) after the layers."""
        B, N, D = features.shape
        if D != self.config.hidden_size:
            raise ValueError(f"The abstractor reads features of width {self.config.hidden_size}, got {D}")
        x = self.query_tokens.to(features.dtype).expand(B, -1, -1)
        attention_mask = self._key_mask(mask, B, N, features.device)
        hidden_states, attentions = (x,) if output_hidden_states else None, () if output_attentions else None
        for layer in self.layers:
            x, weights = layer(x, features, attention_mask, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (weights,)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)

    def _key_mask(self, mask, B: int, N: int, device) -> torch.Tensor | None:
        """(B, 1, 1, Q + N) boolean key mask: the queries are always visible; None when every feature is real."""
        if mask is None:
            return None
        if mask.shape != (B, N):
            raise ValueError(f"mask must have shape (batch, features) = {(B, N)}, got {tuple(mask.shape)}")
        queries = torch.ones(B, self.config.num_query_tokens, dtype=torch.bool, device=device)
        return torch.cat([queries, mask.bool()], dim=1)[:, None, None, :]

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                return_queries: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """features (B, N, D) -> tokens (B, Q + 1, Dt): the projected queries followed by vit_eos; with
        `return_queries`, (tokens, queries (B, Q, D) before visual_fc). Models use this call, not `encode`, for
        every use of the weights: accelerate's offload hooks load them only around `forward`."""
        queries = self.encode(features, mask).last_hidden_state  # (B, Q, D)
        x = self.visual_fc(queries)  # (B, Q, Dt)
        eos = self.vit_eos.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, 1, Dt)
        tokens = torch.cat([x, eos], dim=1)
        return (tokens, queries) if return_queries else tokens
