"""The post-norm BERT layer: self-attention, optional cross-attention, feed-forward, each `norm(x + f(x))`.

Used by the Q-Former (BLIP-2, MiniGPT-4) and BLIP's text encoder/decoder. The config needs BERT's names:
hidden_size, num_attention_heads, intermediate_size, hidden_act, layer_norm_eps, hidden_dropout_prob,
attention_probs_dropout_prob, and encoder_hidden_size for the cross-attention.
"""

from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention, cross_key_value
from .mlp import MLP


class BertLayer(GradientCheckpointingLayer):
    """x = norm(x + attn(x)); [x = norm(x + cross_attn(x, encoder_hidden_states))]; x = norm(x + mlp(x)).

    State-dict names: self_attn.{q,k,v,o}_proj, self_attn_norm, cross_attn.*, cross_attn_norm, mlp.fc{1,2}, mlp_norm.
    `has_ffn=False` leaves the feed-forward out (the BLIP-2 stage-2 Q-Former keeps only its query copy).
    """

    def __init__(self, config, has_cross_attention: bool = False, has_ffn: bool = True, is_causal: bool = False,
                 layer_idx: int | None = None, cross_attention_slot: int | None = None):
        """`layer_idx`: the generation-cache slot of the self-attention keys/values; `cross_attention_slot`: that of
        the image keys/values (projected once per generation, then read from the cache; None: projected every call)."""
        super().__init__()
        D = config.hidden_size
        self.self_attn = self._attention(config, D, is_causal=is_causal, layer_idx=layer_idx)
        self.self_attn_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.cross_attn = self._attention(config, config.encoder_hidden_size, layer_idx=cross_attention_slot) \
            if has_cross_attention else None
        self.cross_attn_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if has_cross_attention else None
        self.mlp = MLP(D, config.intermediate_size, config.hidden_act) if has_ffn else None
        self.mlp_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if has_ffn else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @staticmethod
    def _attention(config, kv_dim: int, is_causal: bool = False, layer_idx=None) -> Attention:
        return Attention(config, hidden_size=config.hidden_size, num_heads=config.num_attention_heads, kv_dim=kv_dim,
                         is_causal=is_causal, dropout=config.attention_probs_dropout_prob, layer_idx=layer_idx)

    def attend(self, x, attention_mask=None, cache=None, output_attentions=False):
        """Post-norm self-attention: (B, T, D) -> (B, T, D), weights."""
        h, weights = self.self_attn(x, attention_mask=attention_mask, cache=cache,
                                    output_attentions=output_attentions)
        return self.self_attn_norm(x + self.dropout(h)), weights

    def cross_attend(self, x, encoder_hidden_states, encoder_attention_mask=None, cache=None):
        """Post-norm cross-attention to encoder_hidden_states (B, S, encoder_hidden_size); with a cache and a
        cross_attention_slot, their keys/values are projected at the first call and read from the cache after."""
        if encoder_hidden_states is None:
            raise ValueError("this layer has cross-attention: pass encoder_hidden_states (the image features)")
        cache = cache if self.cross_attn.layer_idx is not None else None
        key_value = cross_key_value(self.cross_attn, encoder_hidden_states, cache)
        h, _ = self.cross_attn(x, attention_mask=encoder_attention_mask, key_value=key_value)
        return self.cross_attn_norm(x + self.dropout(h))

    def feed_forward(self, x, mlp=None, norm=None):
        """Post-norm feed-forward with this layer's mlp, or with another pair (the Q-Former's query copy)."""
        mlp, norm = (self.mlp, self.mlp_norm) if mlp is None else (mlp, norm)
        return norm(x + self.dropout(mlp(x)))

    def forward(self, x, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, output_attentions=False):
        x, weights = self.attend(x, attention_mask, cache, output_attentions)
        if self.cross_attn is not None and encoder_hidden_states is not None:  # no image: the unimodal text mode
            x = self.cross_attend(x, encoder_hidden_states, encoder_attention_mask, cache)
        return self.feed_forward(x), weights


class BertLMHead(nn.Module):
    """BERT's LM head: dense -> act -> LayerNorm -> decoder (its weight tied to the word embeddings by the model)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, x):
        return self.decoder(self.norm(self.act(self.dense(x))))
