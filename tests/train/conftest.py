"""A tiny LLaVA with the scenes tokenizer, and a tiny scenes set, shared by the training tests."""

import pytest

import vlmhub
from vlmhub.data import scenes, vocab


def tiny_llava_folder(folder, image_size=28):
    tokenizer = vocab.build_tokenizer()
    image_processor = vlmhub.LlavaImageProcessor(size={"shortest_edge": image_size},
                                                 crop_size={"height": image_size, "width": image_size}, image_aspect_ratio="pad")
    processor = vlmhub.LlavaProcessor(image_processor, tokenizer, patch_size=7)
    config = vlmhub.LlavaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=7),
        text_config=dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         # a frozen lm_head at the default 0.02 init caps the logits near uniform whatever LoRA does;
                         # a wider init stands in for a pretrained head
                         initializer_range=0.3),
        image_token_id=processor.image_token_id, image_aspect_ratio="pad",
    )
    vlmhub.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return tiny_llava_folder(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    scenes.generate(out, train=12, test=2, size=28, seed=0)
    return out
