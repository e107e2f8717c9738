"""`import vlmhub` registers our model types with the Auto classes and leaves transformers' own alone."""

import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForZeroShotImageClassification, AutoProcessor

import vlmhub
from tests.conftest import tiny_text, tiny_vision


def test_model_types_are_ours():
    assert vlmhub.ViTConfig.model_type == "vlmhub_vit"
    assert vlmhub.CLIPConfig.model_type == "vlmhub_clip"
    assert isinstance(AutoConfig.for_model("vlmhub_clip"), vlmhub.VlmhubCLIPConfig)


def test_auto_classes_resolve_to_vlmhub(tmp_path):
    config = vlmhub.CLIPConfig(vision_config=tiny_vision(), text_config=tiny_text(), projection_dim=16)
    assert type(AutoModel.from_config(config)) is vlmhub.VlmhubCLIPModel
    assert type(AutoModelForZeroShotImageClassification.from_config(config)) is vlmhub.VlmhubCLIPModel
    processor = vlmhub.CLIPProcessor(image_processor=vlmhub.CLIPImageProcessor(), tokenizer=vlmhub.build_clip_tokenizer())
    AutoModel.from_config(config).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert type(AutoProcessor.from_pretrained(tmp_path)) is vlmhub.VlmhubCLIPProcessor
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is vlmhub.VlmhubCLIPImageProcessor


def test_transformers_checkpoints_still_load_transformers_classes(tmp_path):
    """Our classes must not shadow transformers' names: a transformers CLIP folder stays transformers'."""
    hf = transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99)))
    hf.save_pretrained(tmp_path)
    transformers.CLIPImageProcessorPil().save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is transformers.CLIPModel
    assert type(AutoImageProcessor.from_pretrained(tmp_path)).__module__.startswith("transformers.")


def test_zero_shot_classify_probabilities_sum_to_one():
    config = vlmhub.CLIPConfig(vision_config=tiny_vision(image_size=28, patch_size=7),
                               text_config=tiny_text(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                                     eos_token_id=49407, pad_token_id=49407), projection_dim=16)
    model = vlmhub.CLIPModel(config).eval()
    size = {"shortest_edge": 28}
    processor = vlmhub.CLIPProcessor(vlmhub.CLIPImageProcessor(size=size, crop_size={"height": 28, "width": 28}),
                                     vlmhub.build_clip_tokenizer())
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    probs = vlmhub.zero_shot_classify(model, processor, [image, image], ["cat", "dog", "red square"])
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
