"""OpenFlamingo releases: `checkpoint.pt` (the trainable weights only) + the vision encoder and LM it names.

Input: a folder holding
- `checkpoint.pt`: open_flamingo's flat state dict of trainable parts (`perceiver.*`,
  `lang_encoder.model.layers.{i}.gated_cross_attn_layer.*`, `lang_encoder.model.embed_tokens.weight`); a full
  Flamingo state dict (with `vision_encoder.*` and `...decoder_layer.*`) is accepted too;
- `vision_encoder/`: an open_clip CLIP state dict (`open_clip_pytorch_model.bin` or `open_clip_model.safetensors`)
  and its open_clip config (`open_clip_config.json` or `<name>.json`); only `visual.*` is used;
- `lang_encoder/`: a transformers causal-LM folder (config, weights, tokenizer with `<image>` and `<|endofchunk|>`).
`vision_encoder=`, `lang_encoder=`, `checkpoint=` override the three paths.

What changes on the way:
- cross_attn_every_n_layers is read from which decoder layers have a gated_cross_attn_layer;
- `to_kv` (k then v, stacked on the output dim) is split into k_proj / v_proj; `ff.0/1/3` -> LayerNorm / fc1 / fc2;
- checkpoint.pt's embed_tokens (with the added tokens) replaces the LM folder's; a LM folder saved before the
  tokens were added gets its lm_head padded with mean rows (open_flamingo never saves those rows);
- open_clip's head count is width // head_width from its config (width // 64 without one, or num_attention_heads=).
`patch_tokens_ln_post=True` selects open_clip >= 2.23's behaviour (ln_post on the patch tokens); the default is the
released models' (open_clip <= 2.22, raw tokens).
"""

import json
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from ...configuration.flamingo import VlmhubFlamingoConfig
from ...modeling.flamingo import VlmhubFlamingoForConditionalGeneration
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import append_mean_row
from .openai_clip import _count_blocks, resblock_rules

XATTN = re.compile(r"lang_encoder\.model\.layers\.(\d+)\.gated_cross_attn_layer\.")
OPEN_CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def split_kv(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed [k; v] projection (2 * inner, in) -> k, v (open_flamingo's to_kv)."""
    k, v = t.chunk(2, dim=0)
    return k.contiguous(), v.contiguous()


def vision_config(folder: Path, sd: dict, num_attention_heads: int | None = None) -> dict:
    """Our ViT config from the open_clip config json (if any) and the state dict's shapes."""
    cfg = _open_clip_config(folder)
    vision = cfg.get("vision_cfg", {})
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    heads = num_attention_heads or width // vision.get("head_width", 64)
    return dict(
        hidden_size=width, intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, "visual.transformer"), num_attention_heads=heads,
        image_size=grid * patch, patch_size=patch, hidden_act="quick_gelu" if cfg.get("quick_gelu", True) else "gelu",
        layer_norm_eps=1e-5, patch_bias=False, pre_layernorm=True, post_layernorm="cls",
    )


def _open_clip_config(folder: Path) -> dict:
    """model_cfg of open_clip_config.json, else the first *.json holding a vision_cfg; {} when there is none."""
    for path in sorted(folder.glob("*.json"), key=lambda p: p.name != "open_clip_config.json"):
        data = json.loads(path.read_text())
        data = data.get("model_cfg", data)
        if "vision_cfg" in data:
            return data
    return {}


def read_vision(folder: Path) -> dict:
    for name in OPEN_CLIP_WEIGHTS:
        if (folder / name).exists():
            return read_state_dict(folder / name)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".safetensors"))
    if not files:
        raise ConversionError(f"{folder} holds no open_clip weights ({' or '.join(OPEN_CLIP_WEIGHTS)})")
    return read_state_dict(files[0])


def cross_attn_every_n(targets: list[int], num_layers: int) -> int:
    """The n such that layer i has cross-attention iff (i + 1) % n == 0; ConversionError when none fits."""
    if not targets:
        raise ConversionError("checkpoint.pt has no lang_encoder.model.layers.*.gated_cross_attn_layer weights")
    n = targets[0] + 1
    if targets != [i for i in range(num_layers) if (i + 1) % n == 0]:
        raise ConversionError(f"cross-attention before decoder layers {targets} of {num_layers} is not "
                              "open_flamingo's every-n-th-layer placement")
    return n


def language_rules(targets: list[int], num_layers: int) -> list[Rule]:
    lm, rules = "language_model.model.layers.", []
    for i in range(num_layers):
        dst = f"{lm}{i}." + ("decoder_layer." if i in targets else "")
        rules.append(Rule(rf"lang_encoder\.model\.layers\.{i}\.(?:decoder_layer\.)?(?!gated_cross_attn_layer)(.*)",
                          dst + "{0}"))
    for i in targets:
        src, dst = rf"lang_encoder\.model\.layers\.{i}\.gated_cross_attn_layer\.", f"{lm}{i}.gated_cross_attn."
        rules += [
            Rule(src + "attn_gate", dst + "attn_gate"),
            Rule(src + "ff_gate", dst + "mlp_gate"),
            Rule(src + r"attn\.norm\.(weight|bias)", dst + "input_layernorm.{0}"),
            Rule(src + r"attn\.to_q\.weight", dst + "cross_attn.q_proj.weight"),
            Rule(src + r"attn\.to_kv\.weight", (dst + "cross_attn.k_proj.weight", dst + "cross_attn.v_proj.weight"),
                 split_kv),
            Rule(src + r"attn\.to_out\.weight", dst + "cross_attn.o_proj.weight"),
            Rule(src + r"ff\.0\.(weight|bias)", dst + "post_attention_layernorm.{0}"),
            Rule(src + r"ff\.1\.weight", dst + "mlp.fc1.weight"),
            Rule(src + r"ff\.3\.weight", dst + "mlp.fc2.weight"),
        ]
    return rules + [
        Rule(r"lang_encoder\.(model\..*|lm_head\..*)", "language_model.{0}"),
        Rule(r"lang_encoder\.(old_decoder_blocks|gated_cross_attn_layers)\..*", None),  # aliases of the above
    ]


PERCEIVER = r"perceiver\.layers\.(\d+)\."
PERCEIVER_RULES = [
    Rule(r"perceiver\.(latents|frame_embs|media_time_embs)", "perceiver.{0}"),
    Rule(r"perceiver\.norm\.(weight|bias)", "perceiver.norm.{0}"),
    Rule(PERCEIVER + r"0\.(norm_media|norm_latents)\.(weight|bias)", "perceiver.layers.{0}.{1}.{2}"),
    Rule(PERCEIVER + r"0\.to_q\.weight", "perceiver.layers.{0}.attn.q_proj.weight"),
    Rule(PERCEIVER + r"0\.to_kv\.weight", ("perceiver.layers.{0}.attn.k_proj.weight",
                                         "perceiver.layers.{0}.attn.v_proj.weight"), split_kv),
    Rule(PERCEIVER + r"0\.to_out\.weight", "perceiver.layers.{0}.attn.o_proj.weight"),
    Rule(PERCEIVER + r"1\.0\.(weight|bias)", "perceiver.layers.{0}.ff_norm.{1}"),
    Rule(PERCEIVER + r"1\.1\.weight", "perceiver.layers.{0}.mlp.fc1.weight"),
    Rule(PERCEIVER + r"1\.3\.weight", "perceiver.layers.{0}.mlp.fc2.weight"),
]

VISION_RULES = [
    Rule(r"visual\.conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    Rule(r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    Rule(r"visual\.positional_embedding", "vision_model.embeddings.position_embedding"),
    Rule(r"visual\.ln_(pre|post)\.(weight|bias)", "vision_model.{0}_layernorm.{1}"),
    *resblock_rules("visual.transformer", "vision_model.encoder"),
    Rule(r"visual\.proj", None),  # Flamingo reads the patch tokens, never the projection
]


def gather(checkpoint: dict, vision: dict, lm: dict) -> dict:
    """One state dict in checkpoint.pt's naming: open_clip `visual.*`, the LM as `lang_encoder.*`, then
    checkpoint.pt on top (its trained embed_tokens wins)."""
    sd = {k: v for k, v in vision.items() if k.startswith("visual.")}
    sd |= {f"lang_encoder.{k}": v for k, v in lm.items()}
    for key, value in checkpoint.items():
        sd["visual." + key[len("vision_encoder."):] if key.startswith("vision_encoder.") else key] = value
    return sd


def pad_lm_head(sd: dict, vocab: int) -> None:
    """Mean rows for tokens added after the LM folder was saved (open_flamingo saves no lm_head)."""
    key = "lang_encoder.lm_head.weight"
    while key in sd and sd[key].shape[0] < vocab:
        sd[key] = append_mean_row(sd[key])


def convert(input_path, vision_encoder=None, lang_encoder=None, checkpoint=None, num_attention_heads=None,
            patch_tokens_ln_post: bool = False, **options):
    """-> (VlmhubFlamingoForConditionalGeneration in float32, VlmhubFlamingoProcessor)."""
    root = Path(input_path)
    root, ckpt_path = (root.parent, root) if root.is_file() else (root, root / "checkpoint.pt")
    vision_dir, lm_dir = Path(vision_encoder or root / "vision_encoder"), Path(lang_encoder or root / "lang_encoder")
    for path in (Path(checkpoint or ckpt_path), vision_dir, lm_dir):
        if not path.exists():
            raise ConversionError(f"{path} is missing: open-flamingo needs checkpoint.pt, vision_encoder/ and "
                                  "lang_encoder/ (or the checkpoint=, vision_encoder=, lang_encoder= options)")
    vision_sd = read_vision(vision_dir)
    sd = gather(read_state_dict(Path(checkpoint or ckpt_path)), vision_sd, read_state_dict(lm_dir))
    text = AutoConfig.from_pretrained(lm_dir)
    text.vocab_size = sd["lang_encoder.model.embed_tokens.weight"].shape[0]
    pad_lm_head(sd, text.vocab_size)
    targets = sorted({int(m.group(1)) for k in sd if (m := XATTN.match(k))})
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    config = VlmhubFlamingoConfig(
        vision_config=vision_config(vision_dir, vision_sd, num_attention_heads), text_config=text.to_dict(),
        cross_attn_every_n_layers=cross_attn_every_n(targets, text.num_hidden_layers),
        num_latents=sd["perceiver.latents"].shape[0], perceiver_num_layers=_count_blocks_of(sd, "perceiver.layers"),
        max_num_frames=_rows(sd, "perceiver.frame_embs"), max_num_media=_rows(sd, "perceiver.media_time_embs"),
        media_token_id=_token_id(tokenizer, "<image>"), eoc_token_id=_token_id(tokenizer, "<|endofchunk|>"),
        patch_tokens_ln_post=patch_tokens_ln_post, tie_word_embeddings=text.tie_word_embeddings,
    )
    table = VISION_RULES + PERCEIVER_RULES + language_rules(targets, text.num_hidden_layers)
    model = load_into(VlmhubFlamingoForConditionalGeneration(config), sd, table).eval()
    return model, _processor(config, tokenizer)


def _count_blocks_of(sd: dict, prefix: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.")
    return 1 + max(int(m.group(1)) for k in sd if (m := pattern.match(k)))


def _rows(sd: dict, key: str) -> int | None:
    return sd[key].shape[0] if key in sd else None


def _token_id(tokenizer, token: str) -> int:
    """open_flamingo: tokenizer.encode(token)[-1]; the token must exist (create_model_and_transforms adds it)."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConversionError(f"the lang_encoder tokenizer has no {token!r} token: add '<|endofchunk|>' and '<image>' "
                              "as special tokens, as open_flamingo.create_model_and_transforms does")
    return token_id


def _processor(config: VlmhubFlamingoConfig, tokenizer):
    from ...processing.flamingo import VlmhubFlamingoImageProcessor, VlmhubFlamingoProcessor

    size = config.vision_config.image_size
    image_processor = VlmhubFlamingoImageProcessor(size={"shortest_edge": size},
                                                   crop_size={"height": size, "width": size})
    return VlmhubFlamingoProcessor(image_processor=image_processor, tokenizer=tokenizer)
