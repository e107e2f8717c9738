"""The one multi-head attention of vlmhub: self- or cross-attention on SDPA, with an optional KV cache.

Separate q/k/v/o projections keep the names LoRA targets (q_proj, v_proj) and make checkpoint keys map 1:1.
The kernel comes from transformers' registry (`config._attn_implementation`: sdpa by default, eager, flash, flex);
eager is used for a call that asks for the attention weights, since SDPA does not return them.
"""

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, is_causal=None, **kwargs):
    """Reference attention that also returns the weights. query (B, nh, T, hs), key/value (B, nkv, S, hs)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    elif (module.is_causal if is_causal is None else is_causal) and query.shape[2] > 1:
        causal = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device)
        causal = causal.tril(key.shape[2] - query.shape[2])
        weights = weights.masked_fill(~causal, torch.finfo(weights.dtype).min)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return out, weights


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask (True = attend) -> additive mask in `dtype`: 0 or the dtype's minimum, as transformers builds its
    masks. Made once per forward, it spares SDPA converting a boolean mask in every layer."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32 (Llama's and Meta's RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention over `hidden_states`, or over `context` when given (cross-attention).

    hidden_states (B, T, D) -> (B, T, D). `context` (B, S, kv_dim) supplies keys and values. `attention_mask` is
    boolean (True = attend) or additive, broadcastable to (B, nh, T, S). Grouped-query attention via num_kv_heads.
    `qk_norm_eps` adds RMSNorms over head_dim on queries and keys (q_norm, k_norm: Mllama's cross-attention).
    `key_value` passes keys/values projected earlier by `project_key_value` (a cross-attention K/V cache).
    `head_dim` sets the width of a head when the inner width num_heads * head_dim differs from hidden_size
    (Flamingo: 8 heads x 64 on any hidden size); q_proj maps hidden_size -> inner, o_proj inner -> hidden_size.
    """

    def __init__(
        self,
        config,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        kv_dim: int | None = None,
        bias: bool = True,
        k_bias: bool | None = None,
        out_bias: bool = True,
        is_causal: bool = False,
        dropout: float = 0.0,
        layer_idx: int | None = None,
        qk_norm_eps: float | None = None,
        head_dim: int | None = None,
    ):
        super().__init__()
        self.config = config  # read at call time: set_attn_implementation() switches kernels live
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.num_key_value_groups = self.num_heads // self.num_kv_heads  # name read by transformers' sdpa
        self.head_dim = head_dim or hidden_size // num_heads
        inner = self.num_heads * self.head_dim
        self.scaling = self.head_dim**-0.5
        self.is_causal = is_causal
        self.dropout = dropout
        self.layer_idx = layer_idx
        kv_dim = kv_dim or hidden_size
        kv_out = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.k_proj = nn.Linear(kv_dim, kv_out, bias=bias if k_bias is None else k_bias)
        self.v_proj = nn.Linear(kv_dim, kv_out, bias=bias)
        self.o_proj = nn.Linear(inner, hidden_size, bias=out_bias)
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(self.head_dim, eps=qk_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=qk_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def project_key_value(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """source (B, S, kv_dim) -> keys, values (B, nkv, S, hs), k_norm applied."""
        B, S, _ = source.shape
        k = self.k_proj(source).view(B, S, -1, self.head_dim).transpose(1, 2)  # (B, nkv, S, hs)
        v = self.v_proj(source).view(B, S, -1, self.head_dim).transpose(1, 2)
        return (k if self.k_norm is None else self.k_norm(k)), v

    def forward(self, hidden_states, context=None, attention_mask=None, cache=None, output_attentions=False,
                key_value=None):
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if key_value is None:
            k, v = self.project_key_value(hidden_states if context is None else context)
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)
        else:
            k, v = key_value

        if output_attentions:
            attend = eager_attention
        else:
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
        out, weights = attend(
            self,
            q,
            k,
            v,
            attention_mask,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
            is_causal=self.is_causal and context is None and key_value is None,
        )
        out = self.o_proj(out.reshape(B, T, -1))
        return out, weights


# --- the media keys/values of a cross-attention, kept in the generation cache -----------------------------------------


def cached_media(cache: Cache | None, slot: int):
    """The media keys/values stored at `slot` of a generation cache, or None (no cache, or nothing there yet)."""
    if cache is None or slot >= len(cache.layers):
        return None
    layer = cache.layers[slot]
    if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
        return None
    return layer.keys, layer.values


class MediaCacheLayer(DynamicLayer):
    """A cache layer holding media (image) keys/values for a cross-attention. They belong to the images, not to the
    text, so cropping the text (assisted decoding rolling back rejected tokens) leaves them whole; batch reordering
    still applies.

    Written at prefill and only read while decoding, the layer never changes shape between steps, so it does not make
    a static cache dynamic: transformers asks whether every layer is compileable before it decides it may decode
    without a mask, and a static cache's unwritten slots need the mask. A reset empties it: the next prefill brings
    its own media."""

    is_compileable = True

    def crop(self, tokens_to_remove: int) -> None:
        return None

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False


def reserve_cache_slot(cache: Cache, slot: int) -> None:
    """Make `slot` of a generation cache a MediaCacheLayer. Caches built from a text config hold one layer per
    decoder layer; the media slots come after them (earlier unused slots are filled with plain layers)."""
    while len(cache.layers) < slot:
        cache.layers.append(DynamicLayer())
    if len(cache.layers) == slot:
        cache.layers.append(MediaCacheLayer())


def project_into_cache(attention: Attention, context: torch.Tensor, cache: Cache | None):
    """Keys/values (B, nkv, S, hs) of `context` (B, S, kv_dim) projected by a cross-attention, and appended to the
    cache slot `attention.layer_idx` when a cache is given (what the slot then holds is returned)."""
    key_value = attention.project_key_value(context)
    if cache is None:
        return key_value
    reserve_cache_slot(cache, attention.layer_idx)
    return cache.update(*key_value, attention.layer_idx)


def cross_key_value(attention: Attention, context: torch.Tensor, cache: Cache | None):
    """Keys/values of a cross-attention over `context`: read from the cache slot `attention.layer_idx` once written
    there, else projected (and written there when a cache is given: the first call of a generation). As transformers'
    encoder-decoder caches, a cache belongs to one set of images."""
    cached = cached_media(cache, attention.layer_idx)
    return cached if cached is not None else project_into_cache(attention, context, cache)
