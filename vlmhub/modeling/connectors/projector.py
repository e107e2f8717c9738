"""Projectors from vision features to the language model's width (LLaVA's connector family).

The connector interface every family shares: `forward(features (B, N, Dv), mask=None) -> (B, M, Dt)`.
"""

import re

import torch
from torch import nn
from transformers.activations import ACT2FN


class Projector(nn.Module):
    """`linear` (LLaVA) or `mlp{N}x_<act>` (LLaVA-1.5's mlp2x_gelu: Linear-GELU-Linear), as LLaVA's builder names them.

    Layers are named linear_1 ... linear_N, as in transformers' LlavaMultiModalProjector.
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        depth, act = parse_projector_type(kind)
        self.act = ACT2FN[act] if act else nn.Identity()
        dims = [in_dim] + [out_dim] * depth
        for i in range(depth):
            self.add_module(f"linear_{i + 1}", nn.Linear(dims[i], dims[i + 1], bias=bias))
        self.depth = depth

    def forward(self, features: torch.Tensor, mask=None) -> torch.Tensor:
        x = self.linear_1(features)
        for i in range(2, self.depth + 1):
            x = getattr(self, f"linear_{i}")(self.act(x))
        return x


def parse_projector_type(kind: str) -> tuple[int, str | None]:
    """'linear' -> (1, None); 'mlp2x_gelu' -> (2, 'gelu')."""
    if kind == "linear":
        return 1, None
    match = re.fullmatch(r"mlp(\d+)x_(\w+)", kind)
    if not match or int(match.group(1)) < 1 or match.group(2) not in ACT2FN:
        raise ValueError(f"Unknown projector type {kind!r}: use 'linear' or 'mlp<N>x_<activation>' (e.g. 'mlp2x_gelu')")
    return int(match.group(1)), match.group(2)


def pool_patch_grid(features: torch.Tensor, stride: int) -> torch.Tensor:
    """Visual-token compression: average-pool the square patch grid (B, g*g, D) -> (B, (g//s)^2, D)."""
    if stride == 1:
        return features
    B, N, D = features.shape
    g = int(N**0.5)
    if g * g != N or g % stride:
        raise ValueError(f"Cannot pool {N} patch tokens with stride {stride}: need a square grid divisible by it")
    grid = features.transpose(1, 2).reshape(B, D, g, g)  # (B, D, g, g)
    return nn.functional.avg_pool2d(grid, stride).flatten(2).transpose(1, 2)  # (B, (g/s)^2, D)
