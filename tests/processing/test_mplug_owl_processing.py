"""mPLUG-Owl processors: the original's prompt encoding and preprocessing, chat template, bad input, save/load."""

import pytest
import torch
from PIL import Image
from transformers import LlamaTokenizer

from tests.conftest import PIXEL_TOLERANCE, FIXTURES
from vlmhub.processing.mplug_owl import VlmhubMplugOwlImageProcessor, VlmhubMplugOwlProcessor

ROOT = FIXTURES / "mplug-owl"
SYSTEM = ("The following is a conversation between a curious human and AI assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.\n")
PROMPTS = [SYSTEM + "Human: <image>\nHuman: What is in the picture?\nAI: A small red bird.",
           SYSTEM + "Human: <image>\nHuman: Describe it.\nAI: "]
IMAGES = [ROOT / "raw" / "img0_64x48.png", ROOT / "raw" / "img1_40x60.png"]


@pytest.fixture(scope="module")
def processor():
    tokenizer = LlamaTokenizer.from_pretrained(ROOT / "mplug-owl-tiny")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = VlmhubMplugOwlImageProcessor(size=42, crop_size=42)
    return VlmhubMplugOwlProcessor(image_processor, tokenizer, num_image_tokens=5)


def test_reproduces_the_original_processor(processor):
    from safetensors.torch import load_file

    inputs = load_file(ROOT / "inputs.safetensors")
    out = processor(images=IMAGES, text=PROMPTS)
    expected = inputs["input_ids"].masked_fill(inputs["input_ids"] < 0, processor.image_token_id)
    assert torch.equal(out["input_ids"], expected)  # chunk-wise tokenisation, right-padded with eos
    assert torch.equal(out["attention_mask"], inputs["attention_mask"])
    assert (out["pixel_values"] - inputs["pixel_values"]).abs().max() <= PIXEL_TOLERANCE  # squashed to 42x42, aspect not kept


def test_chat_template_renders_the_original_prompt_format(processor):
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}
    answer = {"role": "assistant", "content": "A small red bird."}
    assert processor.apply_chat_template([user, answer], tokenize=False) == PROMPTS[0]
    ask = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    assert processor.apply_chat_template(ask, tokenize=False, add_generation_prompt=True) == PROMPTS[1]
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(system, tokenize=False) == "Be brief.\nHuman: Hi"


def test_each_image_expands_to_the_abstractor_count(processor):
    out = processor(images=[IMAGES[0]] * 3, text=["<image><image> the", "Human: <image>"], padding_side="left")
    image_id = processor.image_token_id
    assert (out["input_ids"] == image_id).sum(-1).tolist() == [10, 5]
    assert out["pixel_values"].shape == (3, 3, 42, 42)
    short = out["attention_mask"][1]
    assert short[0] == 0 and short[-1] == 1 and out["input_ids"][1, -1] == image_id  # left padded


def test_bad_input_is_a_clear_error(processor, tmp_path):
    with pytest.raises(ValueError, match="1 <image> placeholders but 2 images"):
        processor(images=IMAGES, text=PROMPTS[1])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="corrupt.png.*corrupt"):
        processor(images=[corrupt], text="<image>")
    with pytest.raises(ValueError, match="cuts through an image"):
        processor(images=IMAGES[:1], text="<image> the", max_length=3)
    with pytest.raises(ValueError, match="padding_side"):
        processor(text="Hi", padding_side="middle")


def test_save_load_round_trip(processor, tmp_path):
    from transformers import AutoImageProcessor

    from vlmhub.configuration.mplug_owl import VlmhubMplugOwlConfig

    backends = {"pil": VlmhubMplugOwlImageProcessor, "torchvision": VlmhubMplugOwlImageProcessor}
    AutoImageProcessor.register(VlmhubMplugOwlConfig, image_processor_classes=backends, exist_ok=True)  # the lead's row
    processor.save_pretrained(tmp_path)
    loaded = VlmhubMplugOwlProcessor.from_pretrained(tmp_path)
    assert loaded.num_image_tokens == 5 and loaded.image_token_id == processor.image_token_id
    a, b = processor(images=IMAGES, text=PROMPTS), loaded(images=IMAGES, text=PROMPTS)
    assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "attention_mask", "pixel_values"))
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    assert loaded.image_processor(image, return_tensors="pt")["pixel_values"].shape == (1, 3, 42, 42)
