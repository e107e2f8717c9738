"""Mllama preprocessing: tiling geometry, pixels and masks equal to transformers', prompts, chat template, bad input."""

import io

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoProcessor, PreTrainedTokenizerFast
from transformers.models.mllama import image_processing_pil_mllama as hf_tiling
from transformers.models.mllama.processing_mllama import get_cross_attention_token_mask

from tests.modeling.test_mllama import register
from tests.processing.test_level_map import dirty_or_zeroed
from vlmhub.processing import mllama as mllama_processing
from vlmhub.processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor, image_spans
from vlmhub.processing.tiling import (
    aspect_ratio_id,
    best_grid,
    fit_size,
    pad_bottom_right,
    plan_tiles,
    split_tiles,
    tile_grids,
)

CLIP = dict(image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|image|>", "<|python_tag|>", "<|start_header_id|>",
           "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["user", "assistant", "describe", "this", "and", "that", "compare", "a", "cat", "?", "hello"]
SIZES_WH = [(800, 600), (300, 200), (2000, 500), (500, 2000), (560, 560), (1, 1)]


def tokenizer():
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>"] + SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [t for t in SPECIAL if t not in ("<|begin_of_text|>",
                                                                                          "<|eot_id|>")]})
    return fast


def image(w, h, seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def pair(tile=560, tiles=4):
    theirs = transformers.MllamaImageProcessorPil(size={"height": tile, "width": tile}, max_image_tiles=tiles, **CLIP)
    ours = VlmhubMllamaImageProcessor(size={"height": tile, "width": tile}, max_image_tiles=tiles, **CLIP)
    return theirs, ours


def assert_same(a, b):
    assert torch.equal(a["aspect_ratio_ids"], b["aspect_ratio_ids"])
    assert torch.equal(a["aspect_ratio_mask"], b["aspect_ratio_mask"])
    assert a["num_tiles"] == b["num_tiles"]
    assert a["pixel_values"].shape == b["pixel_values"].shape
    assert torch.equal(a["pixel_values"], b["pixel_values"])  # bit-identical


# --- geometry ---------------------------------------------------------------------------------------------------


def test_grids_are_transformers_aspect_ratios():
    for n in (1, 2, 4, 6, 8):
        assert tile_grids(n) == hf_tiling.get_all_supported_aspect_ratios(n)
    assert tile_grids(4) == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]
    assert aspect_ratio_id((2, 2), 4) == 6 and aspect_ratio_id((1, 1), 1) == 1
    with pytest.raises(ValueError, match="not one of the supported grids"):
        aspect_ratio_id((3, 2), 4)


@pytest.mark.parametrize("h, w, grid, resized", [
    (600, 800, (2, 2), (600, 800)),  # fits a 2x2 canvas without resizing
    (200, 300, (1, 1), (373, 560)),  # small: grows until the limiting side is one tile
    (500, 2000, (1, 4), (500, 2000)),
    (2000, 500, (4, 1), (2000, 500)),
    (560, 560, (1, 1), (560, 560)),  # exactly one tile
    (1, 1, (1, 1), (560, 560)),
    (1, 10000, (1, 4), (1, 2240)),  # downscaled; a side never reaches 0 px
    (1121, 1121, (2, 2), (1120, 1120)),  # one pixel too big for 2x2: shrinks
    (561, 100, (2, 1), (561, 100)),  # taller than a tile, narrower than one: no upscaling past a tile
])
def test_plan_edge_cases(h, w, grid, resized):
    plan = plan_tiles(h, w, 560, 4)
    assert plan.grid == grid and plan.resized == resized
    assert plan.resized[0] <= plan.canvas[0] and plan.resized[1] <= plan.canvas[1]


def test_plan_equals_transformers_on_many_sizes():
    rng = np.random.default_rng(0)
    sizes = [tuple(int(v) for v in s) for s in rng.integers(1, 3000, (300, 2))] + [(56 * k, 56) for k in range(1, 9)]
    for tiles in (1, 4, 6):
        for h, w in sizes:
            canvas = hf_tiling.get_optimal_tiled_canvas(h, w, tiles, 56)
            grid = best_grid(h, w, 56, tiles)
            assert (grid[0] * 56, grid[1] * 56) == tuple(canvas), (h, w, tiles)
            assert fit_size(h, w, grid, 56) == hf_tiling.get_image_size_fit_to_canvas(h, w, *canvas, 56), (h, w)


def test_pad_and_split_are_top_left_and_row_major():
    canvas = pad_bottom_right(np.arange(2 * 3 * 5).reshape(2, 3, 5), (4, 6), value=-1)
    assert canvas.shape == (2, 4, 6) and (canvas[:, 3:] == -1).all() and (canvas[:, :, 5] == -1).all()
    tiles = split_tiles(canvas, (2, 3))
    assert tiles.shape == (6, 2, 2, 2)
    assert np.array_equal(tiles[1], canvas[:, 0:2, 2:4]) and np.array_equal(tiles[3], canvas[:, 2:4, 0:2])
    with pytest.raises(ValueError, match="does not fit"):
        pad_bottom_right(np.zeros((1, 5, 5)), (4, 6))
    with pytest.raises(ValueError, match="no pixels"):
        plan_tiles(0, 10, 560, 4)


# --- image processor ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [10, 1], ids=["56px-tiles", "560px-tiles"])
def test_image_processor_equals_transformers(scale):
    theirs, ours = pair(tile=560 // scale)
    for k, (w, h) in enumerate(SIZES_WH):
        im = image(max(1, w // scale), max(1, h // scale), seed=k)
        assert_same(theirs(im, return_tensors="pt"), ours(im, return_tensors="pt"))


@pytest.mark.parametrize("zeroed", [False, True], ids=["dirty-memory", "zeroed-memory"])
def test_batches_of_different_image_counts_equal_transformers(monkeypatch, zeroed):
    monkeypatch.setattr(mllama_processing, "tile_array", dirty_or_zeroed(zeroed))
    theirs, ours = pair(tile=56)
    batch = [[image(80, 60), image(30, 20, 1, mode="RGBA")], [], [image(20, 50, 2, mode="L")]]
    a, b = theirs(batch, return_tensors="pt"), ours(batch, return_tensors="pt")
    assert_same(a, b)
    assert b["aspect_ratio_ids"].tolist() == [[6, 1], [0, 0], [1, 0]]
    assert b["aspect_ratio_mask"][1].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]  # absent images: one tile
    assert b["pixel_values"][1].abs().sum() == 0 and b["pixel_values"][0, 1, 1:].abs().sum() == 0


def test_image_processor_round_trip_and_other_inputs(tmp_path):
    _, ours = pair(tile=56, tiles=2)
    ours.save_pretrained(tmp_path)
    loaded = VlmhubMllamaImageProcessor.from_pretrained(tmp_path)
    assert loaded.max_image_tiles == 2 and loaded.size["height"] == 56
    pil = image(90, 40)
    as_tensor = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
    a, b = loaded(pil, return_tensors="pt"), loaded(as_tensor, return_tensors="pt")
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["pixel_values"].shape == (1, 1, 2, 3, 56, 56)


def test_image_processor_errors():
    _, ours = pair(tile=56)
    with pytest.raises(ValueError, match="no pixels"):
        ours(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        ours(Image.new("RGB", (0, 4)))
    with pytest.raises(ValueError, match="cannot read image.*corrupt"):
        ours(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="sample 0 has 9 images, more than max_images_per_sample=8"):
        ours([[image(10, 10)] * 9])
    assert ours([[image(10, 10)] * 3], max_images_per_sample=3)["pixel_values"].shape[1] == 3
    with pytest.raises(ValueError, match="square tile"):
        VlmhubMllamaImageProcessor(size={"height": 56, "width": 28})
    with pytest.raises(ValueError, match="max_image_tiles must be a positive integer"):
        VlmhubMllamaImageProcessor(max_image_tiles=0)


# --- processor ----------------------------------------------------------------------------------------------------


def processors(chat_template=None):
    theirs_ip, ours_ip = pair(tile=56)
    tok = tokenizer()
    return (transformers.MllamaProcessor(theirs_ip, tok, chat_template=chat_template),
            VlmhubMllamaProcessor(ours_ip, tok))


def test_image_spans_equal_transformers():
    for ids in ([5, 4, 6, 7], [4, 1, 1, 4, 1, 4, 4, 1, 1], [4, 4, 4, 1, 1, 4, 1], [1, 1, 1], [1, 4]):
        expected = [tuple(s if s[1] != -1 else (s[0], len(ids))) for s in get_cross_attention_token_mask(ids, 4)]
        assert image_spans(ids, 4) == expected, ids


def test_processor_equals_transformers_processor():
    theirs, ours = processors()
    texts = ["<|image|>describe this", "compare <|image|> and <|image|><|image|> that ?"]
    images = [[image(80, 60)], [image(30, 20, 1), image(200, 50, 2), image(56, 56, 3)]]
    a = theirs(images=images, text=texts, padding=True, return_tensors="pt")
    b = ours(images=images, text=texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "cross_attention_mask", "aspect_ratio_ids", "aspect_ratio_mask"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert b["input_ids"][0, :2].tolist() == [ours.image_token_id, ours.tokenizer.bos_token_id]  # bos after image
    # a flat list of images is split over the texts by their <|image|> counts
    flat = ours(images=[im for sample in images for im in sample], text=texts, padding=True, return_tensors="pt")
    assert torch.equal(flat["cross_attention_mask"], b["cross_attention_mask"])
    text_only = ours(text=["hello a cat"], return_tensors="pt")
    assert set(text_only) == {"input_ids", "attention_mask"}


def test_processor_errors():
    _, ours = processors()
    with pytest.raises(ValueError, match=r"the texts have \[1\] <\|image\|> tokens per sample but \[2\] images"):
        ours(images=[[image(10, 10), image(10, 10)]], text=["<|image|>describe"])
    with pytest.raises(ValueError, match=r"the texts have 3 <\|image\|> tokens \(\[1, 2\] per sample\) but 2 images"):
        ours(images=[image(10, 10), image(10, 10)], text=["<|image|>a", "<|image|><|image|>b"])
    with pytest.raises(ValueError, match="more than max_images_per_sample"):
        ours(images=[[image(10, 10)] * 9], text=["<|image|>" * 9])
    corrupt = io.BytesIO(b"GIF89a truncated").getvalue()
    with pytest.raises(ValueError, match="corrupt"):
        ours(images=[[corrupt]], text=["<|image|>a"])


def test_chat_template_and_processor_round_trip(tmp_path):
    register()
    _, ours = processors()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this"}]}]
    text = ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>describe this<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ours.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VlmhubMllamaProcessor and type(loaded.image_processor) is VlmhubMllamaImageProcessor
    a = ours(images=[image(40, 30)], text=[text], return_tensors="pt")
    b = loaded(images=[image(40, 30)], text=[text], return_tensors="pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
