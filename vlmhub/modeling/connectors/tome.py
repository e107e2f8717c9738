"""Token merging (ToMe, Bolya et al. 2023, "Token Merging: Your ViT But Faster"): bipartite soft matching as a
parameter-free visual-token compressor between the vision tower and the projector.

One round: the tokens alternate into sets A (even positions) and B (odd positions); each A token finds its most
cosine-similar B token; the r A tokens with the best matches are merged into their B match by a size-weighted
average (a token's size = how many patches it already stands for), all others are kept. The output keeps the
surviving tokens in their original order (a merged B token stays at its own place). A round removes at most
ceil(n / 2) tokens, so `merge_tokens` runs as many rounds as `r` needs: any r < n gives exactly n - r tokens.

Choices, against the paper's in-ViT version:
- similarity is measured on the features themselves (the selected layer's output, what the projector reads), not on
  the attention keys of a layer: LLaVA stops the tower at the selected layer, so there are no later keys to use;
- merged tokens are plain size-weighted means; the sizes are returned but the language model does not use them
  (no proportional attention: the LM's attention stays unmodified and generation/caching are unaffected).
Everything is batched over (B, N, D) with gathers and scatters; r is a Python int, so shapes are static
(torch.compile friendly).
"""

import torch
from torch import nn


def bipartite_soft_matching(x: torch.Tensor, r: int, size: torch.Tensor | None = None):
    """One ToMe round. x (B, N, D), size (B, N, 1) or None (= ones) -> (x (B, N - r, D), size (B, N - r, 1)).

    r may be at most len(A) = ceil(N / 2). Similarities and averages are computed in at least fp32 (sizes stay
    exact integers under bf16 models); merged tokens are cast back to x's dtype, sizes are returned in that width.
    """
    B, N, D = x.shape
    n_a = (N + 1) // 2
    if r < 0 or r > n_a or (r and N < 2):
        raise ValueError(f"one matching round can merge 0 to {n_a if N > 1 else 0} of {N} tokens, got r={r}")
    wide = torch.promote_types(x.dtype, torch.float32)  # at least fp32 for sizes and averages
    size = torch.ones(B, N, 1, dtype=wide, device=x.device) if size is None else size.to(wide)
    if r == 0:
        return x, size
    metric = nn.functional.normalize(x.to(wide), dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # (B, n_a, n_b): cosine similarity A x B
    best, match = scores.max(dim=-1)  # (B, n_a): each A token's most similar B token
    order = torch.sort(best, dim=-1, descending=True, stable=True).indices  # (B, n_a), ties by position
    merged, kept = order[:, :r], order[:, r:]  # (B, r), (B, n_a - r) indices into A
    # Positions in x: A index i is token 2i, B index j is token 2j + 1.
    source = (2 * merged)[..., None]  # (B, r, 1)
    target = (2 * match.gather(1, merged) + 1)[..., None]  # (B, r, 1): the B token each merged A token joins
    weighted = x.to(wide) * size  # (B, N, D): sums of patches, so merging is a sum and one division
    sums = weighted.scatter_add(1, target.expand(-1, -1, D), weighted.gather(1, source.expand(-1, -1, D)))
    sizes = size.scatter_add(1, target, size.gather(1, source))  # (B, N, 1); merged A tokens are dropped below
    x = torch.where(sizes > size, (sums / sizes).to(x.dtype), x)  # tokens nothing joined stay bit-exact
    b_pos = torch.arange(1, N, 2, device=x.device).expand(B, -1)  # (B, n_b)
    keep = torch.cat([2 * kept, b_pos], dim=1).sort(dim=1).values[..., None]  # (B, N - r, 1) in the original order
    return x.gather(1, keep.expand(-1, -1, D)), sizes.gather(1, keep)


def merge_tokens(x: torch.Tensor, r: int, size: torch.Tensor | None = None, protect_first: bool = False):
    """Remove exactly r tokens from x (B, N, D) by rounds of bipartite soft matching -> (x (B, N - r, D), size).

    protect_first keeps token 0 (a class token) out of the matching, as ToMe protects CLS; it stays first.
    """
    N = x.shape[1] - protect_first
    if r < 0 or (r > 0 and r >= N):
        raise ValueError(f"cannot merge {r} of {N} mergeable tokens: r must be in [0, {N - 1}] to leave at least one")
    wide = torch.promote_types(x.dtype, torch.float32)  # rounds run wide; the result is rounded once at the end
    size = torch.ones(*x.shape[:2], 1, dtype=wide, device=x.device) if size is None else size.to(wide)
    if r == 0:
        return x, size
    head, head_size = x[:, :protect_first], size[:, :protect_first]  # (B, 0 or 1, D)
    rest, size = x[:, protect_first:].to(wide), size[:, protect_first:]
    while r > 0:
        step = min(r, (rest.shape[1] + 1) // 2)
        rest, size = bipartite_soft_matching(rest, step, size)
        r -= step
    return torch.cat([head, rest.to(x.dtype)], dim=1), torch.cat([head_size, size], dim=1)


class TokenMerger(nn.Module):
    """Parameter-free connector stage: features (B, N, D) -> (B, N - r, D) by ToMe (`merge_tokens`); r = 0 is the
    identity. It holds no weights, so adding or removing it leaves a checkpoint unchanged."""

    def __init__(self, r: int, protect_first: bool = False):
        super().__init__()
        if r < 0:
            raise ValueError(f"the number of tokens to merge must be >= 0, got {r}")
        self.r = r
        self.protect_first = protect_first

    def forward(self, features: torch.Tensor, mask=None) -> torch.Tensor:
        if self.r == 0:
            return features
        return merge_tokens(features, self.r, protect_first=self.protect_first)[0]

    def extra_repr(self) -> str:
        return f"r={self.r}, protect_first={self.protect_first}"
