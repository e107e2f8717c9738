"""Tile embeddings of a tiled image encoder (Mllama): learned per-aspect-ratio vectors behind tanh gates.

An image cut into a (rows, cols) grid of tiles is encoded tile by tile; these modules tell each tile where it sits.
Both look their table up by the image's aspect-ratio id (1-based index into the supported grids, 0 = no image) and
are blended in through a tanh gate that starts at zero, so a fresh module leaves the tiles untouched.
Inputs are tiles of one image side by side: x (B, tiles, tokens, D) with aspect_ratio_ids (B,).
"""

import torch
from torch import nn


class AspectRatioEmbedding(nn.Module):
    """x + tanh(gate) * embedding[id][tile]: one vector per tile, added to every token of that tile.

    `embedding` is an nn.Embedding(num_aspect_ratios + 1, max_num_tiles * D): row `id` holds the vectors of the tiles
    of that grid (zeros past its tile count in converted checkpoints).
    """

    def __init__(self, *, num_aspect_ratios: int, max_num_tiles: int, hidden_size: int):
        super().__init__()
        self.max_num_tiles = max_num_tiles
        self.embedding = nn.Embedding(num_aspect_ratios + 1, max_num_tiles * hidden_size)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        B, T, _, D = x.shape
        per_tile = self.embedding(aspect_ratio_ids).view(B, self.max_num_tiles, 1, D)[:, :T]  # (B, T, 1, D)
        return x + per_tile * self.gate.tanh()


class GatedTilePositionEmbedding(nn.Module):
    """x + (1 - tanh(gate)) * position + tanh(gate) * tile_position[id]: token positions shared by every tile,
    blended with positions learned per grid and per tile.

    `embedding` (tokens, D) is the plain ViT position table; `tile_embedding` is an
    nn.Embedding(num_aspect_ratios + 1, max_num_tiles * tokens * D).
    """

    def __init__(self, *, num_aspect_ratios: int, max_num_tiles: int, num_positions: int, hidden_size: int):
        super().__init__()
        self.max_num_tiles = max_num_tiles
        self.embedding = nn.Parameter(torch.zeros(num_positions, hidden_size))
        self.tile_embedding = nn.Embedding(num_aspect_ratios + 1, max_num_tiles * num_positions * hidden_size)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:
        B, T, N, D = x.shape
        gate = self.gate.tanh()
        x = x + (1 - gate) * self.embedding  # (N, D) broadcast over (B, T)
        tiles = self.tile_embedding(aspect_ratio_ids).view(B, self.max_num_tiles, N, D)[:, :T]  # (B, T, N, D)
        return x + gate * tiles
