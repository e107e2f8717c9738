"""Meta's Llama 3.2 Vision release (llama-models): `consolidated.NN.pth` shard(s) + `params.json` in one folder.

params.json holds the text tower and the tiling (vision_chunk_size, vision_max_num_chunks); Meta's code hard-codes
the vision tower. Widths, depths, patch size and tile count are read from the checkpoint's shapes; the two numbers
that no shape shows have options with Meta's values as defaults:

- `vision_num_attention_heads` (also accepted as `num_attention_heads`, the CLI's --num-attention-heads): 16;
- `vision_intermediate_layers_indices`: [3, 7, 15, 23, 30] (inputs of those local layers).

What changes on the way:
- The text stack: Meta's `cross_attention_layers.j` runs before self-attention layer fusion_schedule[j]; ours is
  `language_model.model.layers.{fusion_schedule[j]}.gated_cross_attn`, with that layer moved to `.decoder_layer`.
- Self-attention wq/wk use Meta's interleaved RoPE pairs: permuted to the rotate-half layout of transformers' Llama.
- `learnable_embedding` (8 rows for ids vocab_size..vocab_size+7) stays a separate table; Meta's input id for the
  image is vocab_size (its tokenizer's <|image|> 128011 is replaced by 128256 before the model), our
  image_token_index is the same vocab_size.
- Tile embeddings indexed by the grid, (4, 4, tokens, D), are precomputed per aspect-ratio id as transformers does.
- Model-parallel shards are joined: column-parallel weights on dim 0, row-parallel on dim 1, the rest replicated.
"""

import json
import math
import re
from functools import partial
from pathlib import Path

import torch

from ...configuration.mllama import VlmhubMllamaConfig
from ...modeling.mllama import VlmhubMllamaForConditionalGeneration
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import permute_for_rope

ROW_PARALLEL = re.compile(r".*\.(wo|w2|c_proj)\.weight")  # split on the input dim
COLUMN_PARALLEL = re.compile(r".*(\.(wq|wk|wv|w1|w3|c_fc)\.(weight|bias)|conv1\._linear\.weight|"
                             r"vision_projection\.(weight|bias)|output\.weight|tok_embeddings\.weight|"
                             r"learnable_embedding\.weight)")
ENC = r"vision_model\.vision_encoder\."


def read_release(folder: Path) -> tuple[dict, dict]:
    """params.json and the joined state dict of every consolidated.NN.pth in `folder` (or next to a given shard)."""
    folder = Path(folder)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "params.json").exists():
        raise ConversionError(f"{folder} has no params.json: pass the folder of Meta's Llama 3.2 Vision release")
    params = json.loads((folder / "params.json").read_text())
    params = params.get("model", params)
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise ConversionError(f"{folder} has no consolidated.NN.pth checkpoint")
    return params, join_shards([read_state_dict(s) for s in shards])


def join_shards(shards: list[dict]) -> dict:
    if len(shards) == 1:
        return shards[0]
    joined = {}
    for key in shards[0]:
        parts = [s[key] for s in shards]
        if ROW_PARALLEL.fullmatch(key):
            joined[key] = torch.cat(parts, dim=1)
        elif COLUMN_PARALLEL.fullmatch(key):
            joined[key] = torch.cat(parts, dim=0)
        else:
            joined[key] = parts[0]
    return joined


def fusion_schedule(n_layers: int, n_cross: int) -> list[int]:
    """Meta's _init_fusion_schedule: cross-attention before every k-th self-attention layer, counted from the top."""
    k = math.ceil(n_layers / n_cross)
    return list(range(n_layers))[::-1][::k][:n_cross][::-1]


def _count(sd: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in sd if (m := pattern.match(k))), default=-1)


def mllama_config(params: dict, sd: dict, vision_num_attention_heads: int = 16,
                  vision_intermediate_layers_indices=(3, 7, 15, 23, 30)) -> VlmhubMllamaConfig:
    enc = "vision_model.vision_encoder."
    width, patch_in = sd[enc + "conv1._linear.weight"].shape
    patch = math.isqrt(patch_in // 3)
    tiles, _, tokens, _ = sd[enc + "gated_positional_embedding"].shape
    chunk = params["vision_chunk_size"]
    if (chunk // patch) ** 2 + 1 != tokens or params.get("vision_max_num_chunks", tiles) != tiles:
        raise ConversionError(f"params.json (vision_chunk_size {chunk}, {params.get('vision_max_num_chunks')} chunks) "
                              f"does not match the checkpoint ({tokens} tokens per tile of patch {patch}, {tiles} tiles)")
    vocab, n_layers = params["vocab_size"], params["n_layers"]
    schedule = fusion_schedule(n_layers, params["vision_num_cross_attention_layers"])
    vision = dict(
        hidden_size=width, intermediate_size=sd[enc + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count(sd, enc + "transformer.resblocks"),
        num_global_layers=_count(sd, enc + "global_transformer.resblocks"),
        num_attention_heads=vision_num_attention_heads, image_size=chunk, patch_size=patch, max_num_tiles=tiles,
        intermediate_layers_indices=list(vision_intermediate_layers_indices), layer_norm_eps=1e-5,
    )
    text = dict(
        model_type="llama", vocab_size=vocab, hidden_size=params["dim"], num_hidden_layers=n_layers,
        intermediate_size=sd["text_model.layers.0.feed_forward.w1.weight"].shape[0],
        num_attention_heads=params["n_heads"], num_key_value_heads=params.get("n_kv_heads") or params["n_heads"],
        rms_norm_eps=params["norm_eps"], tie_word_embeddings=False, max_position_embeddings=131072,
        rope_parameters=_rope(params), **_special_tokens(vocab),
    )
    return VlmhubMllamaConfig(vision_config=vision, text_config=text, image_token_index=vocab,
                              cross_attention_layers=[s + j for j, s in enumerate(schedule)],
                              num_learnable_embeddings=sd["text_model.learnable_embedding.weight"].shape[0])


def _special_tokens(vocab_size: int) -> dict:
    """Llama 3's <|begin_of_text|>, <|end_of_text|>, <|finetune_right_pad_id|> when the vocabulary is Llama 3's."""
    if vocab_size != 128256:
        return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return dict(bos_token_id=128000, eos_token_id=128001, pad_token_id=128004)


def _rope(params: dict) -> dict:
    theta = params.get("rope_theta", 500000.0)
    if not params.get("use_scaled_rope"):
        return dict(rope_type="default", rope_theta=theta)
    # Meta's apply_scaling constants (llama3 "scaled" RoPE)
    return dict(rope_type="llama3", rope_theta=theta, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)


def precompute_tile_embedding(t: torch.Tensor, grids: list[list[int]]) -> torch.Tensor:
    """Meta's embedding by grid position (T, T, tokens, D) -> one row per aspect-ratio id (ids + 1, T * tokens * D):
    row id holds embedding[:rows, :cols] in row-major tile order, zeros after; row 0 (no image) is zeros."""
    T, _, tokens, D = t.shape
    table = t.new_zeros(len(grids) + 1, T, tokens, D)
    for i, (rows, cols) in enumerate(grids, start=1):
        table[i, : rows * cols] = t[:rows, :cols].reshape(rows * cols, tokens, D)
    return table.reshape(len(grids) + 1, -1)


def text_rules(config: VlmhubMllamaConfig) -> list[Rule]:
    text = config.text_config
    targets = config.cross_attention_targets()
    lm = "language_model.model."
    q_perm = partial(permute_for_rope, num_heads=text.num_attention_heads)
    k_perm = partial(permute_for_rope, num_heads=text.num_key_value_heads)
    rules = [
        Rule(r"text_model\.tok_embeddings\.weight", lm + "embed_tokens.weight"),
        Rule(r"text_model\.learnable_embedding\.weight", "learnable_embedding.weight"),
        Rule(r"text_model\.norm\.weight", lm + "norm.weight"),
        Rule(r"text_model\.output\.weight", "language_model.lm_head.weight"),
        Rule(r"text_model\.rope\.freqs", None),  # recomputed from rope_theta
    ]
    for n in range(text.num_hidden_layers):
        src, dst = rf"text_model\.layers\.{n}\.", f"{lm}layers.{n}." + ("decoder_layer." if n in targets else "")
        rules += [
            Rule(src + r"attention\.wq\.weight", dst + "self_attn.q_proj.weight", q_perm),
            Rule(src + r"attention\.wk\.weight", dst + "self_attn.k_proj.weight", k_perm),
            Rule(src + r"attention\.w(v|o)\.weight", dst + "self_attn.{0}_proj.weight"),
        ] + _block_rules(src, dst)
    for j, target in enumerate(targets):
        src, dst = rf"text_model\.cross_attention_layers\.{j}\.", f"{lm}layers.{target}.gated_cross_attn."
        rules += [
            Rule(src + r"gate_attn", dst + "attn_gate"),
            Rule(src + r"gate_ffwd", dst + "mlp_gate"),
            Rule(src + r"attention\.w([qkvo])\.weight", dst + "cross_attn.{0}_proj.weight"),
            Rule(src + r"attention\.([qk]_norm)\.weight", dst + "cross_attn.{0}.weight"),
        ] + _block_rules(src, dst)
    return rules


def _block_rules(src: str, dst: str) -> list[Rule]:
    """Norms and SwiGLU feed-forward, shared by self- and cross-attention blocks."""
    return [
        Rule(src + r"attention_norm\.weight", dst + "input_layernorm.weight"),
        Rule(src + r"ffn_norm\.weight", dst + "post_attention_layernorm.weight"),
        Rule(src + r"feed_forward\.w1\.weight", dst + "mlp.gate_proj.weight"),
        Rule(src + r"feed_forward\.w3\.weight", dst + "mlp.up_proj.weight"),
        Rule(src + r"feed_forward\.w2\.weight", dst + "mlp.down_proj.weight"),
    ]


def vision_rules(config: VlmhubMllamaConfig) -> list[Rule]:
    vision, v = config.vision_config, "vision_model."
    grids = vision.supported_aspect_ratios
    to_conv = partial(torch.reshape, shape=(vision.hidden_size, vision.num_channels, vision.patch_size,
                                            vision.patch_size))  # Unfold + Linear weight, (c, kh, kw) order
    per_id = partial(precompute_tile_embedding, grids=grids)
    rules = [
        Rule(ENC + r"conv1\._linear\.weight", v + "patch_embedding.weight", to_conv),
        Rule(ENC + r"class_embedding", v + "class_embedding"),
        Rule(ENC + r"positional_embedding", v + "position_embedding.embedding"),
        Rule(ENC + r"gated_positional_embedding", v + "position_embedding.tile_embedding.weight", per_id),
        Rule(ENC + r"gated_positional_embedding_gate", v + "position_embedding.gate"),
        Rule(ENC + r"(pre|post)_tile_pos_embed\.embedding", v + "{0}_tile_embedding.embedding.weight", per_id),
        Rule(ENC + r"(pre|post)_tile_pos_embed\.gate", v + "{0}_tile_embedding.gate"),
        Rule(ENC + r"ln_(pre|post)\.(weight|bias)", v + "{0}_layernorm.{1}"),
        Rule(r"vision_model\.vision_projection\.(weight|bias)", "multi_modal_projector.{0}"),
    ]
    for theirs, ours in (("transformer", "encoder"), ("global_transformer", "global_encoder")):
        src, dst = ENC + theirs + r"\.resblocks\.(\d+)\.", f"{v}{ours}.layers.{{0}}."
        rules += [
            Rule(src + r"attn\.w([qkvo])\.weight", dst + "self_attn.{1}_proj.weight"),
            Rule(src + r"ln_1\.(weight|bias)", dst + "layer_norm1.{1}"),
            Rule(src + r"ln_2\.(weight|bias)", dst + "layer_norm2.{1}"),
            Rule(src + r"mlp\.c_fc\.(weight|bias)", dst + "mlp.fc1.{1}"),
            Rule(src + r"mlp\.c_proj\.(weight|bias)", dst + "mlp.fc2.{1}"),
            Rule(src + r"(gate_attn|gate_ffn)", dst + "{1}"),
        ]
    return rules


def convert(input_path, vision_num_attention_heads: int | None = None, num_attention_heads: int | None = None,
            vision_intermediate_layers_indices=(3, 7, 15, 23, 30), **options):
    """-> (VlmhubMllamaForConditionalGeneration in float32, VlmhubMllamaImageProcessor for the release's tiling).
    Meta's tokenizer (tiktoken `tokenizer.model`) is not converted."""
    params, sd = read_release(Path(input_path))
    heads = vision_num_attention_heads or num_attention_heads or 16
    config = mllama_config(params, sd, heads, vision_intermediate_layers_indices)
    model = VlmhubMllamaForConditionalGeneration(config)
    load_into(model, sd, text_rules(config) + vision_rules(config))
    return model.eval(), _image_processor(config)


def _image_processor(config: VlmhubMllamaConfig):
    from ...processing.mllama import VlmhubMllamaImageProcessor

    vision = config.vision_config
    size = {"height": vision.image_size, "width": vision.image_size}
    return VlmhubMllamaImageProcessor(size=size, max_image_tiles=vision.max_num_tiles)
