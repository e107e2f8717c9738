"""LAVIS BLIP-2 checkpoints (`{"model": state_dict}` as RunnerBase._save_checkpoint writes them).

The released files hold only what was trained: the frozen EVA ViT ships separately (`eva_vit_g.pth`, no prefix) and
the frozen LM is an HF folder (`opt/`, `facebook/opt-2.7b`). `convert(path)` takes the checkpoint file (or a folder
holding exactly one) and finds the parts beside it: `eva_vit*.pth` and a sub-folder with a `config.json`;
`vision=` and `language_model=` name them explicitly. Keys already in the checkpoint (a full state dict) win.

Stage 1 (Blip2Qformer / Blip2ITM: `itm_head`, no LM) -> VlmhubBlip2ForImageTextRetrieval.
Stage 2 with OPT (Blip2OPT: `opt_proj`) -> VlmhubBlip2ForConditionalGeneration with an `<image>` token: the id after
the tokenizer's last, appending an embedding row (the mean of the others) when the LM has no spare row; that id is
suppressed in generation, so logits over the original vocabulary and greedy outputs are unchanged.

LAVIS stores no hyperparameters: sizes come from shapes; head counts are not stored, so `num_attention_heads`
(ViT; 16 for EVA-g's width 1408, else width // 64) and `qformer_num_attention_heads` (hidden // 64) may be needed.
"""

import re
from pathlib import Path

import torch

from ...configuration.blip2 import VlmhubBlip2Config, VlmhubBlip2Stage1Config
from ...modeling.blip2 import VlmhubBlip2ForConditionalGeneration, VlmhubBlip2ForImageTextRetrieval
from ..checkpoint import read_state_dict
from ..engine import ConversionError, Rule, load_into
from ..transforms import split_qkv, squeeze_batch
from .transformers_blip import qformer_rules

EVA_G_WIDTH, EVA_G_FILE_BLOCKS, EVA_G_USED_BLOCKS = 1408, 40, 39  # create_eva_vit_g builds 39 of the file's 40 blocks


def append_mean_row(t: torch.Tensor) -> torch.Tensor:
    """(V, D) embedding -> (V + 1, D) in float32, the new row the mean of the others (a neutral image-token
    embedding; float32 so an fp16 release and an fp32 copy give the same row)."""
    t = t.float()
    return torch.cat([t, t.mean(dim=0, keepdim=True)])


def eva_rules(src: str, dst: str, used_blocks: int) -> list[Rule]:
    """LAVIS EVA ViT (`{src}blocks.N.attn.{qkv, q_bias, v_bias}`, ...) -> our ViT at `{dst}`; blocks >= used_blocks dropped."""
    s, block, layer = re.escape(src), re.escape(src) + r"blocks\.(\d+)\.", dst + "encoder.layers.{0}."
    unused = "|".join(str(i) for i in range(used_blocks, used_blocks + 64))
    return [
        Rule(s + rf"blocks\.({unused})\..+", None),  # the penultimate-layer features: later blocks are never run
        Rule(s + r"cls_token", dst + "embeddings.class_embedding", squeeze_batch),
        Rule(s + r"pos_embed", dst + "embeddings.position_embedding", squeeze_batch),
        Rule(s + r"patch_embed\.proj\.(weight|bias)", dst + "embeddings.patch_embedding.{0}"),
        Rule(block + r"attn\.qkv\.weight", tuple(layer + f"self_attn.{p}_proj.weight" for p in "qkv"), split_qkv),
        Rule(block + r"attn\.(q|v)_bias", layer + "self_attn.{1}_proj.bias"),
        Rule(block + r"attn\.proj\.(weight|bias)", layer + "self_attn.o_proj.{1}"),
        Rule(block + r"norm([12])\.(weight|bias)", layer + "layer_norm{1}.{2}"),
        Rule(block + r"mlp\.(fc[12])\.(weight|bias)", layer + "mlp.{1}.{2}"),
    ]


def lavis_qformer_rules(text_path: bool) -> list[Rule]:
    """`query_tokens`, `ln_vision.*`, `Qformer.bert.*` (+ `Qformer.cls.*` in stage 1) -> our vision.ln_vision / qformer."""
    rules = [
        Rule(r"query_tokens", "qformer.query_tokens"),
        Rule(r"ln_vision\.(weight|bias)", "vision.ln_vision.{0}"),
        Rule(r"Qformer\.bert\.embeddings\.position_ids", None),  # a buffer of 0..max-1
        Rule(r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", "qformer.layernorm.{0}"),
    ]
    if text_path:
        rules += [
            Rule(r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight", "qformer.{0}_embeddings.weight"),
            Rule(r"Qformer\.cls\.predictions\.transform\.dense\.(weight|bias)", "lm_head.dense.{0}"),
            Rule(r"Qformer\.cls\.predictions\.transform\.LayerNorm\.(weight|bias)", "lm_head.norm.{0}"),
            Rule(r"Qformer\.cls\.predictions\.decoder\.weight", "lm_head.decoder.weight"),  # tied to word_embeddings
            Rule(r"Qformer\.cls\.predictions\.bias", "lm_head.decoder.bias"),
            Rule(r"Qformer\.cls\.predictions\.decoder\.bias", None),  # the same tensor as predictions.bias
        ]
    else:  # stage 2 runs the queries only; a checkpoint that kept the text path gives it up
        rules += [
            Rule(r"Qformer\.cls\..+", None),
            Rule(r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight", None),
            Rule(r"Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)", None),
        ]
    return rules + qformer_rules("Qformer.bert.", "qformer.", "self")


def count_blocks(sd: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    if not found:
        raise ConversionError(f"no keys match {pattern!r}: not the expected checkpoint layout")
    return max(found) + 1


def vision_config_from(sd: dict, prefix: str = "visual_encoder.", num_attention_heads=None, vision_layers=None) -> dict:
    """EVA ViT sizes from shapes; heads from the argument (EVA-g: 16), layers = all blocks except EVA-g's 40th."""
    width, _, patch, _ = sd[prefix + "patch_embed.proj.weight"].shape
    grid = round((sd[prefix + "pos_embed"].shape[-2] - 1) ** 0.5)
    blocks = count_blocks(sd, re.escape(prefix) + r"blocks\.(\d+)\.")
    if vision_layers is None:
        vision_layers = EVA_G_USED_BLOCKS if (width, blocks) == (EVA_G_WIDTH, EVA_G_FILE_BLOCKS) else blocks
    heads = num_attention_heads or _default_heads(width, "ViT", "num_attention_heads", {EVA_G_WIDTH: 16})
    return dict(hidden_size=width, intermediate_size=sd[prefix + "blocks.0.mlp.fc1.weight"].shape[0],
                num_hidden_layers=vision_layers, num_attention_heads=heads, image_size=grid * patch, patch_size=patch,
                qkv_bias=prefix + "blocks.0.attn.q_bias" in sd)


def qformer_config_from(sd: dict, qformer_num_attention_heads=None) -> dict:
    _, num_queries, hidden = sd["query_tokens"].shape
    layer = r"Qformer\.bert\.encoder\.layer\.(\d+)\."
    cross = sorted({int(m.group(1)) for k in sd if (m := re.match(layer + "crossattention", k))})
    words = sd.get("Qformer.bert.embeddings.word_embeddings.weight")
    positions = sd.get("Qformer.bert.embeddings.position_embeddings.weight")
    text = dict(vocab_size=words.shape[0], max_position_embeddings=positions.shape[0]) if words is not None else {}
    return dict(hidden_size=hidden, num_query_tokens=num_queries, num_hidden_layers=count_blocks(sd, layer),
                num_attention_heads=qformer_num_attention_heads or _default_heads(hidden, "Q-Former", "qformer_num_attention_heads"),
                intermediate_size=sd["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
                cross_attention_layers=cross, encoder_hidden_size=sd["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].shape[1],
                use_text_input=words is not None, **text)


def _default_heads(width: int, what: str, option: str, known: dict | None = None) -> int:
    if known and width in known:
        return known[width]
    if width % 64:
        raise ConversionError(f"the checkpoint does not store the {what}'s head count and width {width} is not a "
                              f"multiple of 64: pass {option}=N")
    return width // 64


def with_parts(sd: dict, prefix: str, part: dict) -> dict:
    """sd plus `part` under `prefix`, the checkpoint's own keys winning (a full state dict carries everything)."""
    return {**{prefix + k: v for k, v in part.items()}, **sd}


def locate(input_path) -> tuple[Path, Path]:
    """(checkpoint file, its folder) from a file or a folder holding exactly one LAVIS checkpoint."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}")
    if path.is_file():
        return path, path.parent
    found = sorted(p for p in path.glob("*.pth") if not p.name.startswith("eva_vit"))
    if len(found) != 1:
        raise ConversionError(f"{path} holds {len(found)} candidate checkpoints ({[p.name for p in found]}); pass the file")
    return found[0], path


def find_vision(folder: Path, vision) -> dict:
    path = Path(vision) if vision else next(iter(sorted(folder.glob("eva_vit*.pth"))), None)
    if path is None:
        raise ConversionError(f"the checkpoint has no visual_encoder.* and no eva_vit*.pth is beside it in {folder}; "
                              "pass vision=PATH (LAVIS' eva_vit_g.pth)")
    return read_state_dict(path)


def find_language_model(folder: Path, language_model) -> Path:
    if language_model:
        return Path(language_model)
    found = sorted(p.parent for p in folder.glob("*/config.json"))
    if len(found) != 1:
        raise ConversionError(f"found {len(found)} model folders beside the checkpoint ({[p.name for p in found]}); "
                              "pass language_model=FOLDER (the HF folder of the frozen LM)")
    return found[0]


def load_checkpoint(input_path, vision=None):
    """(state dict with visual_encoder.*, folder)."""
    path, folder = locate(input_path)
    sd = read_state_dict(path)
    if "query_tokens" not in sd:
        raise ConversionError(f"{path} is not a LAVIS BLIP-2 checkpoint (no query_tokens)")
    if not any(k.startswith("visual_encoder.") for k in sd):
        sd = with_parts(sd, "visual_encoder.", find_vision(folder, vision))
    return sd, folder


def convert(input_path, *, vision=None, language_model=None, num_attention_heads=None,
            qformer_num_attention_heads=None, vision_layers=None, **options):
    sd, folder = load_checkpoint(input_path, vision)
    vision_config = vision_config_from(sd, num_attention_heads=num_attention_heads, vision_layers=vision_layers)
    qformer_config = qformer_config_from(sd, qformer_num_attention_heads)
    rules = eva_rules("visual_encoder.", "vision.vision_model.", vision_config["num_hidden_layers"])
    image_size = vision_config["image_size"]
    if "itm_head.weight" in sd:
        config = VlmhubBlip2Stage1Config(vision_config=vision_config, qformer_config=qformer_config,
                                         image_text_hidden_size=sd["vision_proj.weight"].shape[0])
        table = rules + lavis_qformer_rules(True) + [Rule(r"(vision_proj|text_proj|itm_head)\.(weight|bias)", "{0}.{1}"),
                                                     Rule(r"temp", "temp")]
        model = load_into(VlmhubBlip2ForImageTextRetrieval(config), sd, table).eval()
        return model, _stage1_processor(folder, image_size)
    if "opt_proj.weight" not in sd:
        kinds = [k.split(".")[0] for k in sd if k.endswith("_proj.weight")]
        raise ConversionError(f"only BLIP-2 stage 1 and Blip2OPT are supported; this checkpoint has {kinds}")
    return convert_stage2(sd, find_language_model(folder, language_model), vision_config, qformer_config, rules)


def convert_stage2(sd, lm_folder: Path, vision_config, qformer_config, rules, lm_prefix="opt_model.", proj="opt_proj"):
    """Stage 2: the LM's weights (HF folder, under `lm_prefix`), an image token, the projection."""
    from transformers import AutoConfig, AutoTokenizer

    text_config = AutoConfig.from_pretrained(lm_folder).to_dict()
    for key in ("dtype", "torch_dtype", "transformers_version", "architectures", "_name_or_path"):
        text_config.pop(key, None)  # released LMs say float16: we build (and compare) in float32
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    sd = with_parts(sd, lm_prefix, read_state_dict(lm_folder))
    image_token_id, grow = len(tokenizer), len(tokenizer) >= text_config["vocab_size"]
    text_config["vocab_size"] += grow
    qformer_config["use_text_input"] = False
    config = VlmhubBlip2Config(vision_config=vision_config, qformer_config=qformer_config, text_config=text_config,
                               image_token_id=image_token_id)
    model = VlmhubBlip2ForConditionalGeneration(config)
    embed = next(n for n, w in model.named_parameters() if w is model.get_input_embeddings().weight)
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:  # tied: lm_head is the embedding
        sd[lm_prefix + "lm_head.weight"] = sd[lm_prefix + embed.removeprefix("language_model.")]
    table = rules + lavis_qformer_rules(False) + lm_rules(embed, lm_prefix, grow) + [
        Rule(rf"{proj}\.(weight|bias)", "language_projection.{0}")]
    load_into(model, sd, table)
    model.generation_config.suppress_tokens = [image_token_id]  # never an output: it only marks the soft prompt
    return model.eval(), _stage2_processor(tokenizer, vision_config["image_size"], qformer_config["num_query_tokens"])


def lm_rules(embed: str, prefix: str, grow: bool) -> list[Rule]:
    """The LM's own keys map one to one (`embed`: our name of its input embeddings); with `grow`, the image-token
    row is appended to the embeddings and lm_head."""
    p, grown = re.escape(prefix), append_mean_row if grow else None
    rules = [Rule(p + re.escape(embed.removeprefix("language_model.")), embed, grown),
             Rule(p + r"lm_head\.weight", "language_model.lm_head.weight", grown),
             Rule(p + r".*rotary_emb\.inv_freq", None)]  # old transformers stored this recomputed buffer
    return rules + [Rule(p + r"(.+)", "language_model.{0}")]


def _image_processor(size: int):
    from ...processing.blip2 import VlmhubBlip2ImageProcessor

    return VlmhubBlip2ImageProcessor(size={"height": size, "width": size})


def _stage1_processor(folder: Path, size: int):
    return _image_processor(size)  # the Q-Former's tokenizer is BERT's; build it with processing.wordpiece


def _stage2_processor(tokenizer, size: int, num_query_tokens: int):
    from ...processing.blip2 import VlmhubBlip2Processor

    return VlmhubBlip2Processor(_image_processor(size), tokenizer, num_query_tokens=num_query_tokens)
