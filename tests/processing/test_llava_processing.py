"""LLaVA processors: preprocessing parity with transformers, image-token expansion, chat template, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

import vlmhub
from vlmhub.processing.llava import expand_to_square

PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]
CROP = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
WORDS = ["what", "is", "this", "a", "red", "circle", "?", "\n", "USER:", "ASSISTANT:"]


def tokenizer():
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<image>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def processor(aspect="square", **kwargs):
    image_processor = vlmhub.LlavaImageProcessor(image_aspect_ratio=aspect, image_grid_pinpoints=PINPOINTS if aspect == "anyres" else None, **CROP)
    return vlmhub.LlavaProcessor(image_processor, tokenizer(), patch_size=7, **kwargs)


def test_anyres_equals_transformers_llava_next():
    theirs = LlavaNextImageProcessorPil(image_grid_pinpoints=PINPOINTS, **CROP)
    ours = processor("anyres").image_processor
    images = [image(h, w, i) for i, (h, w) in enumerate([(45, 75), (60, 25), (28, 28), (100, 10), (7, 9), (1, 1)])]
    a, b = theirs(images, return_tensors="pt"), ours(images, return_tensors="pt")
    assert torch.equal(a["image_sizes"], b["image_sizes"])
    assert (a["pixel_values"] - b["pixel_values"]).abs().max() == 0


def test_pad_mode_fills_with_the_mean_colour():
    square = expand_to_square(Image.new("RGB", (10, 4), (255, 0, 0)), (122, 116, 104))
    assert square.size == (10, 10) and square.getpixel((0, 0)) == (122, 116, 104) and square.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("aspect, counts", [("square", [16, 16]), ("anyres", [16 + 4 * 9, 16 + 10 * 5])])
def test_each_image_token_expands_to_the_models_count(aspect, counts):
    p = processor(aspect, patch_merge_type="spatial_unpad" if aspect == "anyres" else "flat")
    texts = ["USER: <image>\nwhat is this ? ASSISTANT:", "<image> a red circle"]
    out = p(images=[image(90, 150), image(120, 50, 1)], text=texts, padding=True, return_tensors="pt")
    image_id = p.image_token_id
    assert (out["input_ids"] == image_id).sum(-1).tolist() == counts
    if aspect == "anyres":
        assert out["image_sizes"].tolist() == [[90, 150], [120, 50]] and out["pixel_values"].shape == (2, 5, 3, 28, 28)


def test_processor_output_runs_the_model():
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
    text = dict(model_type="llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=20)
    p = processor("anyres", patch_merge_type="spatial_unpad")
    config = vlmhub.LlavaConfig(vision_config=vision, text_config=text, image_token_id=p.image_token_id,
                                image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS, patch_merge_type="spatial_unpad")
    model = vlmhub.LlavaForConditionalGeneration(config).eval()
    out = p(images=[image(90, 150), image(20, 70)], text=["<image> what", "a <image> red"], padding=True, return_tensors="pt")
    assert model(**out).logits.shape[:2] == out["input_ids"].shape


def test_placeholder_count_must_match_images():
    p = processor()
    with pytest.raises(ValueError, match="2 <image> placeholders but 1 images"):
        p(images=[image(30, 30)], text=["<image> <image> what"])
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        p(images=[image(30, 30), image(30, 30)], text=["<image> what"])


def test_truncation_through_image_tokens_raises():
    p = processor()
    with pytest.raises(ValueError, match="truncation cut through its image tokens"):
        p(images=[image(30, 30)], text=["what is <image> this"], truncation=True, max_length=10)
    ok = p(images=[image(30, 30)], text=["<image> what"], truncation=True, max_length=40)
    assert len(ok["input_ids"][0]) == 17


def test_corrupt_image_raises(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="x.png"):
        processor()(images=[str(tmp_path / "x.png")], text=["<image> what"])


def test_chat_template_is_llava_15_vicuna():
    p = processor()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A small red bird sits on a branch."}]},
        {"role": "user", "content": "And the colour?"},
    ]
    text = p.apply_chat_template(messages, add_generation_prompt=True)
    assert text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
        "and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT: A small red bird "
        "sits on a branch.</s>USER: And the colour? ASSISTANT:"
    )


def test_save_and_reload_keeps_the_counting_settings(tmp_path):
    p = processor("anyres", patch_merge_type="spatial_unpad", spatial_pool_stride=2)
    p.save_pretrained(tmp_path)
    loaded = vlmhub.LlavaProcessor.from_pretrained(tmp_path)
    assert loaded.patch_merge_type == "spatial_unpad" and loaded.spatial_pool_stride == 2
    assert loaded.image_processor.image_grid_pinpoints == PINPOINTS
    assert loaded.num_image_tokens((90, 150)) == p.num_image_tokens((90, 150)) == 4 + 2 * 5
