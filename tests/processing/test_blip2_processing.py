"""BLIP-2 preprocessing: LAVIS' image transform, BERT WordPiece for the Q-Former, image-token expansion."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.conftest import PIXEL_TOLERANCE, FIXTURES
from tests.conversion.test_blip2_conversion import register
from vlmhub.processing.blip2 import VlmhubBlip2ImageProcessor, VlmhubBlip2Processor
from vlmhub.processing.wordpiece import build_wordpiece_tokenizer

register()
OPT, QFORMER = FIXTURES / "lavis-blip2-opt", FIXTURES / "lavis-blip2-qformer"


def test_image_processor_matches_lavis_eval_transform():
    processor = VlmhubBlip2ImageProcessor(size={"height": 42, "width": 42})
    pixels = processor([OPT / "raw" / "img0.png", OPT / "raw" / "img1.png"], return_tensors="pt")["pixel_values"]
    expected = load_file(OPT / "inputs.safetensors")["pixel_values"]
    assert pixels.shape == expected.shape
    assert (pixels - expected).abs().max() <= max(1e-5, PIXEL_TOLERANCE)


def test_wordpiece_matches_the_lavis_bert_ids(tmp_path):
    tokenizer = build_wordpiece_tokenizer(QFORMER / "bert_tokenizer" / "vocab.txt", extra_special_tokens=("[DEC]",),
                                          bos_token="[DEC]")
    inputs = load_file(QFORMER / "inputs.safetensors")
    enc = tokenizer(["a photo of a red bird", "two dogs on grass."], padding=True, return_tensors="pt")
    assert torch.equal(enc["input_ids"], inputs["text_input_ids"])
    assert torch.equal(enc["attention_mask"], inputs["text_attention_mask"])
    assert tokenizer.bos_token_id == 77 and len(tokenizer) == 78  # [DEC] after the 77-token vocabulary
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Two DOGS, on gräss!"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer("a red bird")["input_ids"], skip_special_tokens=True) == "a red bird"
    with pytest.raises(ValueError, match="lacks the special tokens"):
        build_wordpiece_tokenizer(["a", "b"])


def processor(num_query_tokens=3):
    tokenizer = AutoTokenizer.from_pretrained(OPT / "opt")
    return VlmhubBlip2Processor(VlmhubBlip2ImageProcessor(size={"height": 42, "width": 42}), tokenizer,
                                num_query_tokens=num_query_tokens)


def test_processor_expands_image_tokens_before_bos(tmp_path):
    p = processor()
    image = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    enc = p(images=[image, image], text=["a bird", "two dogs"], padding=True, return_tensors="pt")
    image_id = p.image_token_id
    assert image_id == 260
    assert (enc["input_ids"][:, :3] == image_id).all() and (enc["input_ids"][:, 3] == 2).all()  # then BOS </s>
    assert (enc["input_ids"] == image_id).sum() == 6 and enc["attention_mask"][:, :3].all()
    assert enc["pixel_values"].shape == (2, 3, 42, 42)
    text_only = p(text="a bird", return_tensors="pt")
    assert not (text_only["input_ids"] == image_id).any()
    captioning = p(images=image, return_tensors="pt")  # no prompt: image tokens + BOS
    assert captioning["input_ids"].tolist() == [[image_id] * 3 + [2]]
    budget = p(images=[image], text=["a very long caption indeed"], truncation=True, max_length=8, return_tensors="pt")
    assert budget["input_ids"].shape[1] == 8
    p.save_pretrained(tmp_path)
    again = VlmhubBlip2Processor.from_pretrained(tmp_path)
    assert again.num_query_tokens == 3 and again.image_token_id == image_id


def test_bad_inputs_fail_clearly(tmp_path):
    p = processor()
    image = torch.randint(0, 256, (3, 50, 40), dtype=torch.uint8)
    with pytest.raises(ValueError, match="one image per text: got 2 images and 1 texts"):
        p(images=[image, image], text=["a bird"])
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png.*corrupt"):
        p(images=[str(corrupt)], text=["a bird"])
    with pytest.raises(ValueError, match="images, text, or both"):
        p()
