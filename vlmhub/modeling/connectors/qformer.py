"""The Q-Former (BLIP-2): learned query tokens and text share a BERT's self-attention; only the queries
cross-attend to the image (every N layers) and they have their own feed-forward.

`QFormer(features, mask)` is the stage-2 connector: (B, N, Dv) image features -> (B, M, D) query outputs.
`QFormer.encode(...)` runs any mix of queries and text under one of the stage-1 attention masks built by
`stage1_attention_mask`, a pure function:

    ITC  queries and text do not see each other (two unimodal encoders in one pass);
    ITM  everything sees everything (bidirectional, multimodal);
    ITG  queries see only queries; text sees the queries and earlier text (causal captioning).
"""

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput

from ..blocks.bert import BertLayer
from ..blocks.mlp import MLP

MASK_KINDS = ("itc", "itm", "itg")


def stage1_attention_mask(kind: str, num_queries: int, text_attention_mask: torch.Tensor | None = None,
                          batch_size: int | None = None) -> torch.Tensor:
    """Boolean self-attention mask (B, 1, Q+T, Q+T) over [queries; text], True = may attend.

    text_attention_mask (B, T) marks real text tokens (1) and padding (0); padded keys are never attended.
    With no text, the queries attend to each other (all kinds agree).
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    if text_attention_mask is None:
        B = batch_size or 1
        return torch.ones(B, 1, num_queries, num_queries, dtype=torch.bool)
    text = text_attention_mask.bool()
    B, T, Q = text.shape[0], text.shape[1], num_queries
    device = text.device
    is_query = torch.arange(Q + T, device=device) < Q  # (L,)
    if kind == "itm":
        allowed = torch.ones(Q + T, Q + T, dtype=torch.bool, device=device)
    elif kind == "itc":
        allowed = is_query[:, None] == is_query[None, :]  # query<->query, text<->text
    else:  # itg: query rows see queries; text rows see queries and text at or before themselves
        causal = torch.ones(Q + T, Q + T, dtype=torch.bool, device=device).tril()
        allowed = torch.where(is_query[:, None], is_query[None, :].expand(Q + T, -1), causal | is_query[None, :])
    keys = torch.cat([torch.ones(B, Q, dtype=torch.bool, device=device), text], dim=1)  # (B, L)
    return allowed[None, None] & keys[:, None, None, :]


class QFormerLayer(BertLayer):
    """A BERT layer where positions [0, Q) are queries: they alone cross-attend and use the query feed-forward."""

    def __init__(self, config, layer_idx: int):
        super().__init__(config, has_cross_attention=layer_idx in config.cross_attention_layers,
                         has_ffn=config.use_text_input, layer_idx=layer_idx)
        self.query_mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)
        self.query_mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, num_queries: int, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False):
        x, weights = self.attend(x, attention_mask, output_attentions=output_attentions)
        queries, text = x[:, :num_queries], x[:, num_queries:]  # (B, Q, D), (B, T, D)
        if num_queries and self.cross_attn is not None:
            queries = self.cross_attend(queries, encoder_hidden_states, encoder_attention_mask)
        parts = [self.feed_forward(queries, self.query_mlp, self.query_mlp_norm)] if num_queries else []
        if text.shape[1]:
            if self.mlp is None:
                raise ValueError("this Q-Former has no text path (use_text_input=False): pass no input_ids")
            parts.append(self.feed_forward(text))
        return torch.cat(parts, dim=1), weights


class QFormer(nn.Module):
    """query_tokens (1, M, D), optional text embeddings, an embedding LayerNorm, and `num_hidden_layers` QFormerLayers."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        D = config.hidden_size
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, D))
        if config.use_text_input:
            self.word_embeddings = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_token_id)
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, D)
        self.layernorm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(QFormerLayer(config, i) for i in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Image features (B, N, encoder_hidden_size) -> query outputs (B, M, D)."""
        return self.encode(features, mask).last_hidden_state

    def embed(self, batch_size: int, use_queries: bool, input_ids=None) -> torch.Tensor:
        """[query tokens; word + position embeddings of the text] -> LayerNorm -> dropout: (B, Q+T, D)."""
        parts = [self.query_tokens.expand(batch_size, -1, -1)] if use_queries else []
        if input_ids is not None:
            if not self.config.use_text_input:
                raise ValueError("this Q-Former has no text embeddings (use_text_input=False): pass no input_ids")
            T, max_T = input_ids.shape[1], self.config.max_position_embeddings
            if T > max_T:
                raise ValueError(f"text of {T} tokens exceeds the Q-Former's max_position_embeddings {max_T}; truncate it")
            positions = torch.arange(T, device=input_ids.device)  # text positions start at 0, queries have none
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        return self.dropout(self.layernorm(torch.cat(parts, dim=1)))

    def encode(self, features=None, mask=None, input_ids=None, attention_mask=None, self_attention_mask=None,
               output_hidden_states=False, output_attentions=False) -> BaseModelOutput:
        """Queries (when `features` is given) followed by text (when `input_ids` is given), through every layer.

        features (B, N, Dv) / mask (B, N): the image and its padding; attention_mask (B, T): text padding;
        self_attention_mask (B, 1, L, L): e.g. `stage1_attention_mask("itg", ...)`; default bidirectional (ITM).
        Returns last_hidden_state (B, Q+T, D), queries first.
        """
        if features is None and input_ids is None:
            raise ValueError("pass image features, input_ids, or both")
        B = features.shape[0] if features is not None else input_ids.shape[0]
        x = self.embed(B, features is not None, input_ids)
        Q = self.config.num_query_tokens if features is not None else 0
        if self_attention_mask is None and attention_mask is not None:
            self_attention_mask = stage1_attention_mask("itm", Q, attention_mask)
        if features is not None:
            features = features.to(x.dtype)
        cross_mask = mask.bool()[:, None, None, :] if mask is not None else None  # (B, 1, 1, N)
        hidden_states, attentions = (x,) if output_hidden_states else None, () if output_attentions else None
        for layer in self.layers:
            x, weights = layer(x, Q, self_attention_mask, features, cross_mask, output_attentions)
            hidden_states = hidden_states + (x,) if output_hidden_states else None
            attentions = attentions + (weights,) if output_attentions else None
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states, attentions=attentions)
