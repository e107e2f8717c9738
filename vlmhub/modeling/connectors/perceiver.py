"""Perceiver resampler (Flamingo): a fixed set of learned latents reads any number of media tokens and frames.

Each layer: latents += attn(q = norm_latents(latents), k/v = [norm_media(x); norm_latents(latents)]), then
latents += mlp(ff_norm(latents)); a final LayerNorm. Frames of one image (video) are tagged with learned per-frame
time embeddings and concatenated, so the output is always `num_latents` tokens per image, whatever the frame count.
State-dict names: `latents`, `frame_embs`, `media_time_embs`, `layers.N.{norm_media, norm_latents,
attn.{q,k,v,o}_proj, ff_norm, mlp.fc1, mlp.fc2}`, `norm`.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ..blocks.attention import Attention
from ..blocks.mlp import MLP


class PerceiverLayer(GradientCheckpointingLayer):
    """latents (B, n, D) attend to [media (B, S, D); latents] and go through a bias-free feed-forward."""

    def __init__(self, config, *, hidden_size: int, num_heads: int, head_dim: int, intermediate_size: int,
                 hidden_act: str = "gelu", norm_eps: float = 1e-5):
        super().__init__()
        self.norm_media = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.norm_latents = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.attn = Attention(config, hidden_size=hidden_size, num_heads=num_heads, head_dim=head_dim, bias=False,
                              out_bias=False)
        self.ff_norm = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.mlp = MLP(hidden_size, intermediate_size, hidden_act, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        normed = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), normed], dim=1)  # (B, S + n, D)
        latents = latents + self.attn(normed, context=context)[0]
        return latents + self.mlp(self.ff_norm(latents))


class PerceiverResampler(nn.Module):
    """media (B, images, frames, tokens, D) -> (B, images, num_latents, D).

    `max_num_frames` / `max_num_media`: sizes of the learned per-frame and per-image time embeddings (None = none,
    as OpenFlamingo's released models). `config` only supplies the attention kernel choice.
    """

    def __init__(self, config, *, hidden_size: int, num_layers: int = 6, num_heads: int = 8, head_dim: int = 64,
                 num_latents: int = 64, ff_mult: int = 4, max_num_frames: int | None = None,
                 max_num_media: int | None = None, hidden_act: str = "gelu", norm_eps: float = 1e-5):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size))
        self.frame_embs = nn.Parameter(torch.randn(max_num_frames, hidden_size)) if max_num_frames else None
        self.media_time_embs = nn.Parameter(torch.randn(max_num_media, 1, hidden_size)) if max_num_media else None
        self.layers = nn.ModuleList(
            PerceiverLayer(config, hidden_size=hidden_size, num_heads=num_heads, head_dim=head_dim,
                           intermediate_size=hidden_size * ff_mult, hidden_act=hidden_act, norm_eps=norm_eps)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        if media.ndim != 5:
            raise ValueError(f"media must be (batch, images, frames, tokens, dim), got shape {tuple(media.shape)}")
        B, T, F, V, D = media.shape
        if self.frame_embs is not None:
            if F > self.frame_embs.shape[0]:
                raise ValueError(f"{F} frames per image, but the resampler has time embeddings for at most "
                                 f"{self.frame_embs.shape[0]} (max_num_frames)")
            media = media + self.frame_embs[:F, None].to(media.dtype)  # (F, 1, D) over tokens
        media = media.reshape(B, T, F * V, D)  # frames of one image side by side
        if self.media_time_embs is not None:
            if T > self.media_time_embs.shape[0]:
                raise ValueError(f"{T} images per sample, but the resampler has time embeddings for at most "
                                 f"{self.media_time_embs.shape[0]} (max_num_media)")
            media = media + self.media_time_embs[:T].to(media.dtype)  # (T, 1, D)
        media = media.reshape(B * T, F * V, D)
        latents = self.latents.to(media.dtype).expand(B * T, -1, -1)  # (B*T, n, D)
        for layer in self.layers:
            latents = layer(media, latents)
        return self.norm(latents).view(B, T, -1, D)
