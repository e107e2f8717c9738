"""Small named tensor transforms used by the key tables."""

import torch


def split_qkv(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed [q; k; v] projection (3D, ...) -> q, k, v (nn.MultiheadAttention, timm `qkv`)."""
    q, k, v = t.chunk(3, dim=0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def transpose(t: torch.Tensor) -> torch.Tensor:
    """x @ W projections (OpenAI `proj`, Flax `kernel`) -> nn.Linear weight (out, in)."""
    return t.t().contiguous()


def squeeze_batch(t: torch.Tensor) -> torch.Tensor:
    """(1, N, D) -> (N, D): timm/ViT `pos_embed`, (1, 1, D) -> (D,): `cls_token`."""
    return t.reshape(t.shape[-2], t.shape[-1]) if t.shape[-2] > 1 else t.reshape(-1)


def conv_hwio_to_oihw(t: torch.Tensor) -> torch.Tensor:
    """Flax conv kernel (H, W, in, out) -> torch Conv2d weight (out, in, H, W)."""
    return t.permute(3, 2, 0, 1).contiguous()


def flax_heads_in(t: torch.Tensor) -> torch.Tensor:
    """Flax attention q/k/v kernel (D, heads, head_dim) -> Linear weight (heads*head_dim, D)."""
    return t.reshape(t.shape[0], -1).t().contiguous()


def flax_heads_out(t: torch.Tensor) -> torch.Tensor:
    """Flax attention out kernel (heads, head_dim, D) -> Linear weight (D, heads*head_dim)."""
    return t.reshape(-1, t.shape[-1]).t().contiguous()


def flatten(t: torch.Tensor) -> torch.Tensor:
    """Flax per-head bias (heads, head_dim) -> (heads*head_dim,)."""
    return t.reshape(-1)


def scalar(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(())


def append_mean_row(t: torch.Tensor) -> torch.Tensor:
    """One more vocabulary row (a new token such as <image>), initialised to the mean of the others."""
    return torch.cat([t, t.float().mean(0, keepdim=True).to(t.dtype)])


def permute_for_rope(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Meta's q/k projection (RoPE on adjacent pairs: 0,1 | 2,3 ...) -> the rotate-half layout of transformers'
    Llama (first half | second half of each head): rows (heads, hs/2, 2) -> (heads, 2, hs/2)."""
    out_dim, in_dim = t.shape
    return t.view(num_heads, out_dim // num_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim).contiguous()


def split_qkv_per_head(t: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fused query_key_value projection laid out per head, rows (heads, 3, hs) (mPLUG-Owl's vision attention,
    Megatron/BLOOM style) -> q, k, v, each rows (heads, hs). Works on weights (3D, in) and biases (3D,)."""
    rows = t.shape[0]
    per_head = t.reshape(num_heads, 3, rows // (3 * num_heads), *t.shape[1:])  # (heads, 3, hs, ...)
    q, k, v = (per_head[:, i].reshape(rows // 3, *t.shape[1:]).contiguous() for i in range(3))
    return q, k, v
