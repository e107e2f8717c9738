"""Gated cross-attention: text tokens of a language model attend to media tokens (Mllama, Flamingo).

`GatedCrossAttentionLayer` is the block; `DecoderLayerWithCrossAttention` places one in front of a decoder layer of
any transformers causal LM. The placement is decided once, when the model is built (`insert_cross_attention`), from
a list of indices in the config; nothing is patched at run time and no layer keeps state between calls: the media
and their mask arrive as forward arguments, and the media keys/values, when cached, live in the generation cache
passed to every call (`cache`), at the slot `layer_idx` of the block.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_layers import GradientCheckpointingLayer

from ..blocks.attention import Attention, RMSNorm, additive_mask, cached_media, project_into_cache
from ..blocks.mlp import MLP

NORMS = ("rms", "layer")
MLPS = ("gated", "plain")


class GatedMLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)): Llama's SwiGLU feed-forward, bias-free."""

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.act = ACT2FN[hidden_act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class GatedCrossAttentionLayer(GradientCheckpointingLayer):
    """Text attends to media, both branches behind tanh gates that start at zero (then the layer is the identity):

        x = x + tanh(attn_gate) * [row] * cross_attn(input_layernorm(x), media)
        x = x + tanh(mlp_gate)  * [row] * mlp(post_attention_layernorm(x))

    `row` is 1 for text tokens that may see at least one media token and 0 for the others (tokens before the first
    image); `mask_rows_in_attention` / `mask_rows_in_mlp` say where it applies (Meta's Mllama: both; transformers'
    Mllama up to 5.23: the MLP only; Flamingo: the attention only). Fully masked rows attend to every media token
    inside the softmax (then get zeroed as configured), so they never produce NaN.

    `head_dim` (None = hidden_size // num_heads) gives the attention an inner width num_heads * head_dim of its own
    (Flamingo: 8 x 64 whatever the LM's width).

    Shapes: hidden_states (B, T, D); media_states (B, S, media_dim); media_mask boolean (B, T, S), True = may attend,
    or that mask prepared once for all the layers of a forward (`prepare_media_mask`); None = everything visible.
    """

    def __init__(self, config, *, hidden_size: int, num_heads: int, num_kv_heads: int | None = None,
                 media_dim: int | None = None, intermediate_size: int, hidden_act: str = "silu", norm: str = "rms",
                 norm_eps: float = 1e-5, mlp: str = "gated", qk_norm: bool = True, mask_rows_in_attention: bool = True,
                 mask_rows_in_mlp: bool = True, layer_idx: int | None = None, head_dim: int | None = None):
        super().__init__()
        if norm not in NORMS or mlp not in MLPS:
            raise ValueError(f"norm must be one of {NORMS} and mlp one of {MLPS}, got {norm!r} and {mlp!r}")
        make_norm = (lambda: RMSNorm(hidden_size, eps=norm_eps)) if norm == "rms" else (
            lambda: nn.LayerNorm(hidden_size, eps=norm_eps))
        self.layer_idx = layer_idx  # the generation-cache slot holding this layer's media keys/values
        self.mask_rows_in_attention = mask_rows_in_attention
        self.mask_rows_in_mlp = mask_rows_in_mlp
        self.input_layernorm = make_norm()
        self.cross_attn = Attention(config, hidden_size=hidden_size, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                    kv_dim=media_dim, bias=False, out_bias=False, layer_idx=layer_idx,
                                    qk_norm_eps=norm_eps if qk_norm else None, head_dim=head_dim)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.post_attention_layernorm = make_norm()
        if mlp == "gated":
            self.mlp = GatedMLP(hidden_size, intermediate_size, hidden_act)
        else:
            self.mlp = MLP(hidden_size, intermediate_size, hidden_act, bias=False)
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states, media_states=None, media_mask=None, cache: Cache | None = None,
                return_weights: bool = False):
        """-> hidden_states (B, T, D), and with `return_weights` the attention weights (B, nh, T, S) as well (those
        of the configured kernel: eager gives them, SDPA None). Without media_states the keys/values cached at prefill
        are used; with neither (a text-only call) the layer is skipped and hidden_states come back unchanged."""
        key_value = self.media_key_value(media_states, cache)
        if key_value is None:
            return (hidden_states, None) if return_weights else hidden_states
        attend, row = _visibility(media_mask, hidden_states, key_value[0].shape[-2])
        h, weights = self.cross_attn(self.input_layernorm(hidden_states), attention_mask=attend, key_value=key_value)
        if self.mask_rows_in_attention and row is not None:
            h = h * row
        hidden_states = hidden_states + self.attn_gate.tanh() * h
        del h  # not held while the MLP runs: its wide activations set the peak memory
        h = self.mlp(self.post_attention_layernorm(hidden_states))
        if self.mask_rows_in_mlp and row is not None:
            h = h * row
        hidden_states = hidden_states + self.mlp_gate.tanh() * h
        return (hidden_states, weights) if return_weights else hidden_states

    def media_key_value(self, media_states, cache):
        """Keys/values (B, nkv, S, hs) of the media: projected (and cached) when media_states are given, else read
        from the cache; None when there are neither."""
        if media_states is not None:
            return project_into_cache(self.cross_attn, media_states, cache)
        return cached_media(cache, self.layer_idx)


class MediaMask:
    """A boolean (B, T, S) media mask prepared once per forward for all its cross-attention layers
    (`prepare_media_mask`): the row mask, and the attention mask with fully masked rows opened up, made additive once
    per dtype."""

    def __init__(self, media_mask: torch.Tensor):
        media_mask = media_mask.bool()
        self.shape = tuple(media_mask.shape)
        self.row = media_mask.any(-1, keepdim=True)  # (B, T, 1): the token sees at least one media token
        # (B, 1, T, S): a row that sees nothing attends everywhere (no NaN), then gets zeroed
        self.attend = (media_mask | ~self.row)[:, None]
        self._additive = {}

    def additive(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._additive:
            self._additive[dtype] = additive_mask(self.attend, dtype)
        return self._additive[dtype]


def prepare_media_mask(media_mask: torch.Tensor | None) -> MediaMask | None:
    """Boolean (B, T, S) media mask -> MediaMask, so that the layers of one forward share it; None stays None."""
    return media_mask if media_mask is None or isinstance(media_mask, MediaMask) else MediaMask(media_mask)


def _visibility(media_mask, hidden_states, num_media_tokens: int):
    """The additive attention mask (B, 1, T, S) in the hidden dtype and the boolean row mask (B, T, 1) of a media
    mask (a boolean (B, T, S) tensor or a MediaMask); (None, None) when everything is visible."""
    if media_mask is None:
        return None, None
    B, T = hidden_states.shape[:2]
    if tuple(media_mask.shape) != (B, T, num_media_tokens):
        raise ValueError(f"media_mask must have shape (batch, text tokens, media tokens) = {(B, T, num_media_tokens)}, "
                         f"got {tuple(media_mask.shape)}")
    media_mask = prepare_media_mask(media_mask)
    return media_mask.additive(hidden_states.dtype), media_mask.row


class DecoderLayerWithCrossAttention(nn.Module):
    """A transformers decoder layer preceded by a GatedCrossAttentionLayer.

    The language model passes its extra keyword arguments to every decoder layer, so `media_states`, `media_mask` and
    `cross_attention_outputs` given to `language_model(...)` arrive here; the plain layers ignore them.
    `cross_attention_outputs` ({"hidden_states": [], "attentions": []}, either key optional) collects the output and
    attention weights of each block that runs, in layer order, for a model that lists them as entries of their own
    (Mllama, as transformers does). State-dict names: `gated_cross_attn.*` and `decoder_layer.*` (as open_flamingo's
    FlamingoLayer).
    """

    def __init__(self, gated_cross_attn: GatedCrossAttentionLayer, decoder_layer: nn.Module):
        super().__init__()
        self.gated_cross_attn = gated_cross_attn
        self.decoder_layer = decoder_layer

    def forward(self, hidden_states, *args, media_states=None, media_mask=None, cache=None,
                cross_attention_outputs: dict | None = None, **kwargs):
        # positional tensors, keyword cache: gradient checkpointing drops the cache rather than writing it twice
        if cross_attention_outputs is None:
            hidden_states = self.gated_cross_attn(hidden_states, media_states, media_mask, cache=cache)
        else:
            out, weights = self.gated_cross_attn(hidden_states, media_states, media_mask, cache=cache,
                                                 return_weights=True)
            if out is not hidden_states:  # the block ran (without media it is skipped and returns its input)
                for key, value in (("hidden_states", out), ("attentions", weights)):
                    if key in cross_attention_outputs:
                        cross_attention_outputs[key].append(value)
            hidden_states = out
        return self.decoder_layer(hidden_states, *args, cache=cache, **kwargs)


def insert_cross_attention(layers: nn.ModuleList, blocks: dict[int, GatedCrossAttentionLayer]) -> None:
    """Wrap layers[i] for each i in `blocks` so that blocks[i] runs right before it (done once, at construction)."""
    for index, block in blocks.items():
        if not 0 <= index < len(layers):
            raise ValueError(f"cannot put cross-attention before decoder layer {index}: the model has {len(layers)}")
        if isinstance(layers[index], DecoderLayerWithCrossAttention):
            raise ValueError(f"decoder layer {index} already has a cross-attention layer")
        layers[index] = DecoderLayerWithCrossAttention(block, layers[index])
