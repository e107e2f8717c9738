"""Mllama conversion: live parity with transformers through the CLI, and Meta's release through the fixture."""

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.conftest import FIXTURES
from tests.modeling.test_mllama import register
from tests.processing.test_mllama_processing import CLIP, tokenizer
from vlmhub.conversion import SOURCES, ConversionError
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.conversion.sources import llama_vision
from vlmhub.conversion.sources.llama_vision import fusion_schedule, join_shards
from vlmhub.modeling.mllama import VlmhubMllamaForConditionalGeneration
from vlmhub.processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor, cross_attention_mask
from vlmhub.processing.tiling import plan_tiles

ATOL = 1e-5
META = FIXTURES / "llama3.2-vision"
GRIDS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]
IMAGE = 120


@pytest.fixture(autouse=True, scope="module")
def _registered():
    register()


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def hf_model():
    config = transformers.MllamaConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
                           intermediate_size=64, vision_output_dim=96, image_size=28, patch_size=14,
                           intermediate_layers_indices=[0, 2], max_num_tiles=4),
        text_config=dict(vocab_size=120, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, cross_attention_layers=[1, 3], bos_token_id=100,
                         eos_token_id=101, pad_token_id=0, max_position_embeddings=64),
        image_token_index=IMAGE,
    )
    torch.manual_seed(0)
    model = transformers.MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # far from init, gates open: every path moves the logits
        for name, p in model.named_parameters():
            if "gate" in name and p.numel() == 1:
                p.fill_(0.8)
            elif "norm" in name and p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mllama")
    hf = hf_model()
    hf.save_pretrained(folder / "hf")
    processor = transformers.MllamaProcessor(
        transformers.MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=4, **CLIP), tokenizer(),
        chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    processor.save_pretrained(folder / "hf")
    assert convert_cli(["transformers", "--input", str(folder / "hf"), "--output", str(folder / "ours")]) == 0
    return hf, AutoModelForImageTextToText.from_pretrained(folder / "ours").eval(), folder


def inputs(grids, length=12, batch=1):
    """BOS first (a row that sees no image), one <|image|> per image; pixels zero past each image's tiles."""
    torch.manual_seed(len(grids) * 10 + sum(r * c for r, c in grids))
    ids = torch.randint(1, 100, (batch, length))
    ids[:, 0] = 100
    starts = [2 + 3 * i for i in range(len(grids))]
    ids[:, starts] = IMAGE
    pixels = torch.randn(batch, len(grids), 4, 3, 28, 28)
    ar_ids = torch.tensor([[GRIDS.index(list(g)) + 1 for g in grids]] * batch)
    ar_mask = torch.zeros(batch, len(grids), 4, dtype=torch.long)
    cam = torch.zeros(batch, length, len(grids), 4, dtype=torch.long)
    for i, (r, c) in enumerate(grids):
        ar_mask[:, i, : r * c] = 1
        pixels[:, i, r * c :] = 0
        cam[:, starts[i] : starts[i + 1] if i + 1 < len(grids) else length, i, : r * c] = 1
    return dict(input_ids=ids, pixel_values=pixels, aspect_ratio_ids=ar_ids, aspect_ratio_mask=ar_mask,
                cross_attention_mask=cam)


CASES = {"1 tile": [(1, 1)], "2 tiles": [(2, 1)], "3 tiles": [(1, 3)], "4 tiles": [(2, 2)],
         "2 images, 4 + 2 tiles": [(2, 2), (1, 2)], "2 images, 1 + 4 tiles": [(1, 1), (4, 1)]}


@pytest.mark.parametrize("grids", CASES.values(), ids=CASES.keys())
def test_logits_equal_transformers(converted, grids):
    hf, ours, _ = converted
    assert type(ours) is VlmhubMllamaForConditionalGeneration
    x = inputs(grids)
    with torch.no_grad():
        a, b = hf(**x).logits, ours(**x).logits
        assert a.shape == b.shape and a.abs().max() > 1  # far from a degenerate model
        assert max_diff(a, b) <= ATOL
        vision = hf.model.vision_model(x["pixel_values"], x["aspect_ratio_ids"], x["aspect_ratio_mask"])
        ours_vision = ours.get_image_features(x["pixel_values"], x["aspect_ratio_ids"], x["aspect_ratio_mask"])
        assert max_diff(vision.last_hidden_state, ours_vision.last_hidden_state) <= ATOL


def test_batched_logits_and_greedy_generation_equal_transformers(converted):
    hf, ours, _ = converted
    x = inputs([(2, 2), (1, 2)], batch=2)
    x["pixel_values"][1] = torch.randn_like(x["pixel_values"][1]) * (x["pixel_values"][0] != 0)
    with torch.no_grad():
        assert max_diff(hf(**x).logits, ours(**x).logits) <= ATOL
    a = hf.generate(**x, max_new_tokens=8, do_sample=False)
    b = ours.generate(**x, max_new_tokens=8, do_sample=False)
    assert a.shape == (2, 20) and torch.equal(a, b)


def test_precomputed_cross_attention_states_in_either_layout(converted):
    """transformers' cross_attention_states are (batch * images * tiles, tokens, hidden); ours (batch, all, hidden)."""
    hf, ours, _ = converted
    x = inputs([(2, 2), (1, 2)], batch=2)
    x["pixel_values"][1] = torch.randn_like(x["pixel_values"][1]) * (x["pixel_values"][0] != 0)
    text = {k: v for k, v in x.items() if k != "pixel_values"}
    with torch.no_grad():
        tokens = hf.model.vision_model(x["pixel_values"], x["aspect_ratio_ids"], x["aspect_ratio_mask"]).last_hidden_state
        theirs = hf.model.multi_modal_projector(tokens).reshape(-1, tokens.shape[-2], hf.config.text_config.hidden_size)
        expected = hf(**x).logits
        for states in (theirs, theirs.reshape(2, -1, theirs.shape[-1])):
            assert max_diff(ours(**text, cross_attention_states=states).logits, expected) <= ATOL
        with pytest.raises(ValueError, match="rows for a batch of 2"):
            ours(**text, cross_attention_states=theirs[:3])


def test_hidden_states_and_attentions_list_the_cross_attention_layers_as_transformers_does(converted):
    """transformers lists its cross-attention layers as layers of their own; ours run inside the self-attention layer
    they precede, and their outputs (and eager attention weights) are put where transformers has them: every entry
    equal, for a selection of hidden states by index too, and without images (the blocks skipped, no entries)."""
    hf, ours, _ = converted
    x = inputs([(2, 2), (1, 2)])
    text = {"input_ids": x["input_ids"]}
    with torch.no_grad():
        for call in (x, text):
            theirs, mine = hf(**call, output_hidden_states=True), ours(**call, output_hidden_states=True)
            assert len(mine.hidden_states) == len(theirs.hidden_states)
            assert max(max_diff(a, b) for a, b in zip(theirs.hidden_states, mine.hidden_states)) <= ATOL
        picked = [2, -1]  # a cross-attention layer's output and the last
        theirs, mine = hf(**x, output_hidden_states=picked), ours(**x, output_hidden_states=picked)
        assert [h is None for h in mine.hidden_states] == [h is None for h in theirs.hidden_states]
        assert all(max_diff(theirs.hidden_states[i], mine.hidden_states[i]) <= ATOL for i in picked)
        for model in (hf, ours):
            model.set_attn_implementation("eager")
        try:
            theirs, mine = hf(**x, output_attentions=True), ours(**x, output_attentions=True)
        finally:
            for model in (hf, ours):
                model.set_attn_implementation("sdpa")
    assert len(mine.attentions) == len(theirs.attentions) == hf.config.text_config.num_hidden_layers
    assert max(max_diff(a, b) for a, b in zip(theirs.attentions, mine.attentions)) <= ATOL


GENERATION_MODES = {
    "static cache": dict(do_sample=False, cache_implementation="static"),
    "no cache": dict(do_sample=False, use_cache=False),
    "beam search, 2 of 3 beams": dict(do_sample=False, num_beams=3, num_return_sequences=2),
    "sampling, 2 sequences": dict(do_sample=True, top_k=5, num_return_sequences=2),
}


@pytest.mark.parametrize("mode", GENERATION_MODES.values(), ids=GENERATION_MODES.keys())
def test_other_generation_modes_equal_transformers(converted, mode):
    """Beams and extra sequences repeat the images and their cross-attention masks; a static cache needs the mask."""
    hf, ours, _ = converted
    x = inputs([(2, 2), (1, 2)], batch=2)
    outputs = []
    for model in (hf, ours):
        torch.manual_seed(0)
        outputs.append(model.generate(**x, max_new_tokens=6, min_new_tokens=6, **mode))
    assert torch.equal(*outputs)


def test_processor_carries_over(converted):
    _, _, folder = converted
    theirs, ours = AutoProcessor.from_pretrained(folder / "hf"), AutoProcessor.from_pretrained(folder / "ours")
    assert type(ours) is VlmhubMllamaProcessor and type(ours.image_processor) is VlmhubMllamaImageProcessor
    assert ours.chat_template == theirs.chat_template and ours.image_processor.size["height"] == 28
    rng = np.random.default_rng(0)
    images = [[Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 90), (20, 20))]]
    kwargs = dict(images=images, text=["<|image|>describe <|image|> this"], return_tensors="pt")
    a, b = theirs(**kwargs), ours(**kwargs)
    for key in ("input_ids", "attention_mask", "cross_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a["pixel_values"], b["pixel_values"])


# --- Meta's release (fixture) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def meta(tmp_path_factory):
    manifest = json.loads((META / "manifest.json").read_text())
    heads = manifest["hyperparameters"]["vision"]["heads"]
    out = tmp_path_factory.mktemp("meta") / "ours"
    # the CLI once the lead registers the source; the option is the head count no shape shows
    sources = dict(SOURCES) | {"llama-vision": llama_vision}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vlmhub.conversion.__main__.SOURCES", sources)
        patch.setattr("vlmhub.conversion.SOURCES", sources)
        code = convert_cli(["llama-vision", "--input", str(META), "--output", str(out), "--num-attention-heads",
                            str(heads)])
    assert code == 0
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    return model, manifest, load_file(META / "inputs.safetensors"), load_file(META / "expected.safetensors")


def meta_inputs(inp, case):
    ratios = inp[f"{case}_aspect_ratios"][0].tolist()
    return dict(input_ids=inp[f"{case}_input_ids"], pixel_values=inp[f"{case}_pixel_values"],
                aspect_ratio_ids=torch.tensor([[GRIDS.index(r) + 1 for r in ratios]]),
                cross_attention_mask=inp[f"{case}_cross_attention_mask_tiles"])


@pytest.mark.parametrize("case", ["single", "multi"])
def test_meta_release_outputs(meta, case):
    model, manifest, inp, exp = meta
    x = meta_inputs(inp, case)
    with torch.no_grad():
        features = model.get_image_features(x["pixel_values"], x["aspect_ratio_ids"])
        logits = model(**x).logits
    assert max_diff(features.last_hidden_state, exp[f"{case}_vision_encoder_output"]) <= 1e-4
    assert max_diff(features.pooler_output, exp[f"{case}_vision_tokens"]) <= 1e-4
    assert max_diff(logits, exp[f"{case}_logits"]) <= 1e-4
    # transformers' row masking (MLP only) is a plausible but different model: the flag matters here
    model.config.mask_cross_attention_rows = False
    for layer in model.language_model.get_decoder().layers:
        if hasattr(layer, "gated_cross_attn"):
            layer.gated_cross_attn.mask_rows_in_attention = False
    try:
        with torch.no_grad():
            assert max_diff(model(**x).logits, exp[f"{case}_logits"]) > 1e-3
    finally:
        for layer in model.language_model.get_decoder().layers:
            if hasattr(layer, "gated_cross_attn"):
                layer.gated_cross_attn.mask_rows_in_attention = True


def test_meta_schedule_masks_and_config(meta):
    model, manifest, inp, _ = meta
    text = manifest["hyperparameters"]["text"]
    assert fusion_schedule(4, 2) == text["fusion_schedule"] == model.config.cross_attention_targets()
    assert model.config.cross_attention_layers == [1, 4]
    assert model.config.image_token_index == manifest["hyperparameters"]["image_token_id_in_model_input"]
    vision = model.config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_global_layers, vision.vision_output_dim) == (
        32, 32, 8, 192)
    assert model.config.text_config.intermediate_size == text["ffn_hidden_dim"]
    for case in ("single", "multi"):  # our processor's mask from the same tokens and tiles
        ids = inp[f"{case}_input_ids"][0].tolist()
        mask = cross_attention_mask([ids], [inp[f"{case}_num_tiles"][0].tolist()], 256, 4)
        assert np.array_equal(mask, inp[f"{case}_cross_attention_mask_tiles"].numpy())


def test_meta_tiling_on_raw_images():
    manifest = json.loads((META / "manifest.json").read_text())
    inp = load_file(META / "inputs.safetensors")
    processor = VlmhubMllamaImageProcessor()  # the release's 560 px, 4 tiles, CLIP statistics
    for name, record in manifest["preprocess_560"].items():
        image = Image.open(META / "raw" / name)
        w, h = record["raw_size_wh"]
        plan = plan_tiles(h, w, 560, 4)
        assert plan.grid == tuple(record["aspect_ratio_hw"]) and plan.canvas == tuple(record["canvas_wh"][::-1])
        assert plan.resized == tuple(record["resized_wh"][::-1])
        tiles = processor(image, return_tensors="pt")["pixel_values"][0, 0, : record["num_tiles"]]
        key = name.removesuffix(".png")
        assert max_diff(tiles[:, :, ::16, ::16], inp[f"{key}_tiles_sub16"]) <= 1e-5
        assert max_diff(tiles.mean((-1, -2)), inp[f"{key}_tile_mean"]) <= 1e-5
        assert max_diff(tiles.double().sum((-1, -2)), inp[f"{key}_tile_sum"].double()) <= 1.0  # sums over 313600 px
    small = VlmhubMllamaImageProcessor(size={"height": 56, "width": 56})
    for case, names in (("single", ["tiny_150x60"]), ("multi", ["tiny_150x60", "tiny_40x90"])):
        pixels = small([[Image.open(META / "raw" / f"{n}.png") for n in names]], return_tensors="pt")["pixel_values"]
        assert max_diff(pixels, inp[f"{case}_pixel_values"]) <= 1e-5


def test_meta_shards_join_and_bad_folders(tmp_path):
    params, sd = llama_vision.read_release(META)
    halves = [{}, {}]
    for key, t in sd.items():  # a 2-way model-parallel release
        if llama_vision.ROW_PARALLEL.fullmatch(key):
            parts = t.chunk(2, dim=1)
        elif llama_vision.COLUMN_PARALLEL.fullmatch(key):
            parts = t.chunk(2, dim=0)
        else:
            parts = (t, t)
        for half, part in zip(halves, parts):
            half[key] = part.clone()
    joined = join_shards(halves)
    assert joined.keys() == sd.keys() and all(torch.equal(joined[k], sd[k]) for k in sd)
    with pytest.raises(ConversionError, match="no params.json"):
        llama_vision.convert(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConversionError, match="no consolidated"):
        llama_vision.convert(tmp_path)
    with pytest.raises(ValueError, match=r"hidden_size \(32\) must be a multiple of num_attention_heads \(5\)"):
        llama_vision.convert(META, vision_num_attention_heads=5)
