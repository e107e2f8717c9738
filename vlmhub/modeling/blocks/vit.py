"""The one ViT: patch + position embeddings, pre-norm encoder layers, encoder, and the vision tower.

Configured by `VisionTowerConfig` for CLIP (ln_pre, bias-free patches, norm on the pooled token), timm/Google
ViT (patch bias, norm on every token), and the towers of the VLM families (hidden layer selection). The encoder
is also CLIP's text transformer (causal), so every tower in vlmhub shares one layer class.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

from .attention import Attention
from .mlp import MLP


class VisionEmbeddings(nn.Module):
    """pixels (B, C, H, W) -> [class token; patches] + learned positions (B, 1 + N, D)."""

    def __init__(self, config):
        super().__init__()
        self.patch_size = config.patch_size
        self.image_size = config.image_size
        self.num_channels = config.num_channels
        self.grid = config.image_size // config.patch_size
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=config.patch_bias
        )
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(self.grid**2 + 1, config.hidden_size))

    def positions(self, height: int, width: int) -> torch.Tensor:
        """(1 + h*w, D) positions for a (height, width) image; bicubic interpolation of the patch grid if it differs."""
        h, w = height // self.patch_size, width // self.patch_size
        if (h, w) == (self.grid, self.grid):
            return self.position_embedding
        cls_pos, patch_pos = self.position_embedding[:1], self.position_embedding[1:]
        D = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid, self.grid, D).permute(0, 3, 1, 2)  # (1, D, g, g)
        patch_pos = nn.functional.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(h * w, D)
        return torch.cat([cls_pos, patch_pos])

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        self._check(pixel_values, interpolate_pos_encoding)
        B, _, H, W = pixel_values.shape
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        cls = self.class_embedding.to(x.dtype).expand(B, 1, -1)
        x = torch.cat([cls, x], dim=1)  # the patches are freed here, before the sum is made (peak memory)
        return x + self.positions(H, W).to(x.dtype)

    def _check(self, pixel_values, interpolate_pos_encoding):
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.num_channels:
            raise ValueError(
                f"pixel_values must have shape (batch, {self.num_channels}, height, width), got {tuple(pixel_values.shape)}"
            )
        H, W = pixel_values.shape[-2:]
        if interpolate_pos_encoding:
            if H % self.patch_size or W % self.patch_size:
                raise ValueError(f"Image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        elif (H, W) != (self.image_size, self.image_size):
            raise ValueError(
                f"Input image size ({H}*{W}) doesn't match model ({self.image_size}*{self.image_size}); "
                "resize it with the processor or pass interpolate_pos_encoding=True"
            )


class EncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x)).

    `gated=True` scales both branches by tanh of a learned scalar (gate_attn, gate_ffn; zero = identity layer), as
    Mllama's global vision encoder does. `attention_out_bias=False` drops the o_proj bias (Mllama's vision attention).
    """

    def __init__(self, config, is_causal: bool = False, layer_idx: int | None = None, *, gated: bool = False,
                 attention_out_bias: bool = True):
        super().__init__()
        D = config.hidden_size
        self.layer_norm1 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.self_attn = Attention(
            config,
            hidden_size=D,
            num_heads=config.num_attention_heads,
            bias=config.qkv_bias,
            k_bias=config.k_bias,
            out_bias=attention_out_bias,
            is_causal=is_causal,
            dropout=config.attention_dropout,
            layer_idx=layer_idx,
        )
        self.layer_norm2 = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.mlp = MLP(D, config.intermediate_size, config.hidden_act)
        self.gated = gated
        if gated:
            self.gate_attn = nn.Parameter(torch.zeros(1))
            self.gate_ffn = nn.Parameter(torch.zeros(1))

    def forward(self, x, attention_mask=None, output_attentions=False):
        h, weights = self.self_attn(self.layer_norm1(x), attention_mask=attention_mask, output_attentions=output_attentions)
        x = x + (self.gate_attn.tanh() * h if self.gated else h)
        del h  # not held while the MLP runs: its wide activations set the peak memory
        h = self.mlp(self.layer_norm2(x))
        x = x + (self.gate_ffn.tanh() * h if self.gated else h)
        return x, weights


class Encoder(nn.Module):
    """A stack of EncoderLayers that can return every hidden state and attention map."""

    def __init__(self, config, is_causal: bool = False, *, num_layers: int | None = None, gated: bool = False,
                 attention_out_bias: bool = True):
        """`num_layers` overrides config.num_hidden_layers (Mllama's global encoder); see EncoderLayer for the rest."""
        super().__init__()
        count = config.num_hidden_layers if num_layers is None else num_layers
        self.layers = nn.ModuleList(
            EncoderLayer(config, is_causal=is_causal, layer_idx=i, gated=gated, attention_out_bias=attention_out_bias)
            for i in range(count)
        )
        self.gradient_checkpointing = False

    def forward(self, x, attention_mask=None, output_hidden_states=False, output_attentions=False, num_layers=None):
        """Run the first `num_layers` layers (all by default): towers read from a middle layer stop there."""
        hidden_states, attentions = (x,) if output_hidden_states else None, () if output_attentions else None
        for layer in self.layers[:num_layers]:
            x, weights = layer(x, attention_mask, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (weights,)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)


class VisionTransformer(nn.Module):
    """embeddings -> [pre_layernorm] -> encoder -> post_layernorm on the class token ("cls") or all tokens ("all").

    Returns BaseModelOutputWithPooling: pooler_output is the (normed) class token. hidden_states[i] is the input of
    layer i (hidden_states[0] = embeddings after pre_layernorm), as in transformers.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.embeddings = VisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.pre_layernorm else nn.Identity()
        self.encoder = Encoder(config)
        self.post_layernorm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.post_layernorm != "none" else None

    def forward(self, pixel_values, interpolate_pos_encoding=False, output_hidden_states=False, output_attentions=False):
        x = self.pre_layernorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        out = self.encoder(x, output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        last = out.last_hidden_state
        if self.config.post_layernorm == "all":
            last = self.post_layernorm(last)
            pooled = last[:, 0]
        elif self.config.post_layernorm == "cls":
            pooled = self.post_layernorm(last[:, 0])
        else:
            pooled = last[:, 0]
        return BaseModelOutputWithPooling(
            last_hidden_state=last, pooler_output=pooled, hidden_states=out.hidden_states, attentions=out.attentions
        )

    def hidden_states_at(self, pixel_values, layers: list[int], interpolate_pos_encoding=False) -> list[torch.Tensor]:
        """hidden_states[i] for each i in `layers` (transformers' indexing: 0 = embeddings, -1 = the last layer's
        output), running only the layers the deepest of them needs."""
        n = len(self.encoder.layers)
        index = [i % (n + 1) for i in layers]
        x = self.pre_layernorm(self.embeddings(pixel_values, interpolate_pos_encoding))
        out = self.encoder(x, output_hidden_states=True, num_layers=max(index))
        return [out.hidden_states[i] for i in index]
