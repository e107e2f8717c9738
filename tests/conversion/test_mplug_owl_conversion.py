"""mPLUG-Owl parity with the original code (X-PLUG/mPLUG-Owl) through the fixture bundle in tests/fixtures/mplug-owl."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

from tests.conftest import PIXEL_TOLERANCE, FIXTURES
from vlmhub.configuration.mplug_owl import VlmhubMplugOwlConfig
from vlmhub.conversion import ConversionError, convert
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.modeling.mplug_owl import VlmhubMplugOwlForConditionalGeneration
from vlmhub.processing.mplug_owl import VlmhubMplugOwlImageProcessor, VlmhubMplugOwlProcessor
from vlmhub.conversion.sources import SOURCES, mplug_owl

ROOT = FIXTURES / "mplug-owl"
CHECKPOINT = ROOT / "mplug-owl-tiny"
TOLERANCE = 1e-4  # the bundle's tolerance; its fp32 noise floor is 1.9e-6


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """Register the family and the source locally (the package-level rows are added by the lead)."""
    AutoConfig.register(VlmhubMplugOwlConfig.model_type, VlmhubMplugOwlConfig, exist_ok=True)
    AutoModelForImageTextToText.register(VlmhubMplugOwlConfig, VlmhubMplugOwlForConditionalGeneration, exist_ok=True)
    backends = {"pil": VlmhubMplugOwlImageProcessor, "torchvision": VlmhubMplugOwlImageProcessor}
    AutoImageProcessor.register(VlmhubMplugOwlConfig, image_processor_classes=backends, exist_ok=True)
    AutoProcessor.register(VlmhubMplugOwlConfig, VlmhubMplugOwlProcessor, exist_ok=True)
    monkeypatch.setitem(SOURCES, "mplug-owl", mplug_owl)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def bundle():
    inputs, expected = load_file(ROOT / "inputs.safetensors"), load_file(ROOT / "expected.safetensors")
    return inputs, expected


def our_ids(inputs, image_token_id):
    """The original's sentinel -1 replaced by our real image token."""
    return inputs["input_ids"].masked_fill(inputs["input_ids"] < 0, image_token_id)


def test_cli_conversion_matches_the_original(tmp_path, bundle):
    inputs, expected = bundle
    assert convert_cli(["mplug-owl", "--input", str(CHECKPOINT), "--output", str(tmp_path / "out")]) == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, VlmhubMplugOwlForConditionalGeneration)
    ids, mask, pixels = our_ids(inputs, model.config.image_token_id), inputs["attention_mask"], inputs["pixel_values"]
    embeds = {}
    model.language_model.register_forward_pre_hook(lambda mod, args, kw: embeds.update(x=kw["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        vision = model.vision_model(pixels).last_hidden_state
        image = model.get_image_features(pixels)
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    vocab = expected["logits"].shape[-1]
    diffs = {
        "vision_last_hidden_state": max_diff(vision, expected["vision_last_hidden_state"]),  # measured 1.2e-6
        "abstractor_output": max_diff(image.last_hidden_state, expected["abstractor_output"]),  # 2.1e-6
        "abstractor_pooler_output": max_diff(image.pooler_output, expected["abstractor_pooler_output"]),  # 1.4e-6
        "inputs_embeds": max_diff(embeds["x"], expected["inputs_embeds"]),  # 2.1e-6
        "logits": max_diff(out.logits[..., :vocab], expected["logits"]),  # 1.8e-6, padded positions included
    }
    assert all(d <= TOLERANCE for d in diffs.values()), diffs


def test_loss_over_the_original_vocabulary_matches(bundle):
    """The original's loss (media and padding targets ignored) from our logits over its 128 tokens; the model's own
    loss also has the added <image> class in its softmax and is 0.005 higher on this bundle."""
    inputs, expected = bundle
    model, _ = convert("mplug-owl", CHECKPOINT)
    ids, mask = our_ids(inputs, model.config.image_token_id), inputs["attention_mask"]
    labels = ids.masked_fill((mask == 0) | (ids == model.config.image_token_id), -100)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"]).logits
    vocab = expected["logits"].shape[-1]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1, :vocab].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert max_diff(loss, expected["loss"][0]) <= TOLERANCE  # measured 0.0-5e-7


def test_converted_processor_reproduces_the_original_inputs(tmp_path, bundle):
    inputs, _ = bundle
    convert("mplug-owl", CHECKPOINT, tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert isinstance(processor, VlmhubMplugOwlProcessor) and processor.num_image_tokens == 5
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in
                ("What is in the picture?", "Describe it.")]
    messages[0].append({"role": "assistant", "content": "A small red bird."})
    texts = [processor.apply_chat_template(messages[0], tokenize=False),
             processor.apply_chat_template(messages[1], tokenize=False, add_generation_prompt=True)]
    out = processor(images=[ROOT / "raw" / "img0_64x48.png", ROOT / "raw" / "img1_40x60.png"], text=texts)
    assert torch.equal(out["input_ids"], our_ids(inputs, processor.image_token_id))
    assert torch.equal(out["attention_mask"], inputs["attention_mask"])
    assert max_diff(out["pixel_values"], inputs["pixel_values"]) <= PIXEL_TOLERANCE


def test_image_token_is_real_and_suppressed_in_generation(bundle):
    inputs, _ = bundle
    model, processor = convert("mplug-owl", CHECKPOINT)
    assert model.config.image_token_id == 128 == processor.image_token_id
    assert model.config.text_config.vocab_size == 129 and model.generation_config.suppress_tokens == [128]
    prompt = processor(images=[ROOT / "raw" / "img1_40x60.png"], text=processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}], tokenize=False,
        add_generation_prompt=True))
    generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, prompt["input_ids"].shape[1] + 8) and not (generated[0, -8:] == 128).any()


def test_rotary_buffers_are_dropped_on_purpose_and_the_table_is_strict(tmp_path):
    from vlmhub.conversion.checkpoint import read_state_dict

    state = read_state_dict(CHECKPOINT)
    assert any(k.endswith("rotary_emb.inv_freq") for k in state)  # present in the release, dropped by the table
    torch.save(state | {"abstractor.unexpected": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    for name in ("config.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "preprocessor_config.json"):
        shutil.copy(CHECKPOINT / name, tmp_path / name)
    with pytest.raises(ConversionError, match="abstractor.unexpected"):
        convert("mplug-owl", tmp_path)


def test_not_an_mplug_owl_folder_is_a_clear_error():
    with pytest.raises(ConversionError, match="expected 'mplug-owl'"):
        convert("mplug-owl", FIXTURES / "llava-1.5" / "llava-v1.5-tiny")
