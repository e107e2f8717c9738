"""The Hub: transformers-format folders through our classes' from_pretrained (models and processors), model cards."""

import json

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from transformers import AutoModelForImageTextToText

import vlmhub
from tests.conftest import text_ids
from tests.processing.test_llava_processing import image, tokenizer
from vlmhub import hub
from vlmhub.conversion.__main__ import main as convert_cli

ATOL = 1e-5
SMALL_SHARDS = "40KB"  # every tiny model below is saved in several shards
TINY_VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16, patch_size=4)
LLAVA_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                    patch_size=7, model_type="clip_vision_model")
LLAVA_TEXT = dict(model_type="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=120, pad_token_id=0, eos_token_id=2, bos_token_id=1)
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
IMAGE = 119


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def hf_clip():
    return transformers.CLIPModel(transformers.CLIPConfig(
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=99,
                         max_position_embeddings=12, eos_token_id=97, bos_token_id=96),
        vision_config=TINY_VISION, projection_dim=16)).eval()


def hf_llava(next_: bool = False):
    if next_:
        return transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(
            vision_config=LLAVA_VISION, text_config=LLAVA_TEXT, image_token_index=IMAGE, image_grid_pinpoints=PINPOINTS)).eval()
    return transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
        vision_config=LLAVA_VISION, text_config=LLAVA_TEXT, image_token_index=IMAGE)).eval()


def sharded(model, folder):
    model.save_pretrained(folder, max_shard_size=SMALL_SHARDS)
    assert (folder / "model.safetensors.index.json").exists()
    return folder


def llava_inputs(ours, next_: bool):
    """A prompt with exactly as many image tokens as `ours` produces (ours checks the count)."""
    if next_:
        extra = dict(pixel_values=torch.randn(1, 5, 3, 28, 28), image_sizes=torch.tensor([[30, 60]]))
        extra["pixel_values"] = extra["pixel_values"][:, : ours.num_crops((30, 60))]
    else:
        extra = dict(pixel_values=torch.randn(1, 3, 28, 28))
    with torch.no_grad():
        count = len(ours.get_image_features(**extra).pooler_output[0])
    ids = torch.tensor([[1, 5, 6] + [IMAGE] * count + [7, 8, 9]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)


# --- transformers-format folders through our classes ------------------------------------------------------------------


def test_vit_folders_load_through_our_classes(tmp_path):
    config = transformers.ViTConfig(**TINY_VISION, num_labels=3)
    hf_base, hf_head = transformers.ViTModel(config).eval(), transformers.ViTForImageClassification(config).eval()
    base = vlmhub.ViTModel.from_pretrained(sharded(hf_base, tmp_path / "base"))
    head = vlmhub.ViTForImageClassification.from_pretrained(sharded(hf_head, tmp_path / "head"))
    assert type(base) is vlmhub.ViTModel and type(head) is vlmhub.ViTForImageClassification
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert max_diff(hf_base(pixels).pooler_output, base(pixels).pooler_output) <= ATOL
        assert max_diff(hf_head(pixels).logits, head(pixels).logits) <= ATOL


def test_clip_folder_and_processor_load_through_our_classes(tmp_path):
    hf = hf_clip()
    folder = sharded(hf, tmp_path / "clip")
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                         image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4])
    theirs = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer())
    theirs.save_pretrained(folder)
    ours = vlmhub.CLIPModel.from_pretrained(folder)
    ids, mask = text_ids(2, 12)
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a, b = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels), ours(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    assert max_diff(a.logits_per_image, b.logits_per_image) <= ATOL and max_diff(a.text_embeds, b.text_embeds) <= ATOL

    processor = vlmhub.CLIPProcessor.from_pretrained(folder)
    assert type(processor) is vlmhub.VlmhubCLIPProcessor
    images = [torch.randint(0, 256, (3, 20, 16), dtype=torch.uint8)]
    x, y = (p(text=["what is a red circle ?"], images=images, return_tensors="pt") for p in (theirs, processor))
    assert torch.equal(x["input_ids"], y["input_ids"]) and max_diff(x["pixel_values"], y["pixel_values"]) <= 1e-6
    image_only = vlmhub.CLIPImageProcessor.from_pretrained(folder, crop_size={"height": 8, "width": 8})
    assert type(image_only) is vlmhub.VlmhubCLIPImageProcessor and list(image_only.image_mean) == [0.4, 0.5, 0.6]
    assert image_only(images, return_tensors="pt")["pixel_values"].shape[-1] == 8  # keyword overrides apply


@pytest.mark.parametrize("next_", [False, True], ids=["llava", "llava_next"])
def test_llava_folders_load_through_our_class(tmp_path, next_):
    hf = hf_llava(next_)
    ours = vlmhub.LlavaForConditionalGeneration.from_pretrained(sharded(hf, tmp_path / "hf"))
    assert type(ours) is vlmhub.VlmhubLlavaForConditionalGeneration
    assert ours.config.vlmhub_provenance["source"] == "transformers"
    inputs = llava_inputs(ours, next_)
    with torch.no_grad():
        assert max_diff(hf(**inputs).logits, ours(**inputs).logits) <= ATOL
    generate = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(hf.generate(**inputs, **generate), ours.generate(**inputs, **generate))


def test_llava_processor_from_a_transformers_folder(tmp_path):
    theirs = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer(), patch_size=7, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    hf_llava().save_pretrained(tmp_path)
    theirs.save_pretrained(tmp_path)
    ours = vlmhub.LlavaProcessor.from_pretrained(tmp_path)
    assert type(ours) is vlmhub.VlmhubLlavaProcessor
    kwargs = dict(text=["USER: <image>\nwhat is this ? ASSISTANT:"], images=[image(40, 30)], return_tensors="pt")
    a, b = theirs(**kwargs), ours(**kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and max_diff(a["pixel_values"], b["pixel_values"]) <= 1e-6


def test_wrong_class_for_a_folder_is_a_clear_error(tmp_path):
    hf_llava().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="converts to VlmhubLlavaForConditionalGeneration"):
        vlmhub.CLIPModel.from_pretrained(tmp_path)


def test_our_own_folders_still_load_the_usual_way(tmp_path):
    ours = vlmhub.LlavaForConditionalGeneration.from_pretrained(sharded(hf_llava(), tmp_path / "hf"))
    ours.save_pretrained(tmp_path / "ours")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "ours")
    direct = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path / "ours")
    for loaded in (again, direct):
        assert all(torch.equal(p, q) for p, q in zip(ours.state_dict().values(), loaded.state_dict().values()))
    assert direct.config.vlmhub_provenance == ours.config.vlmhub_provenance  # provenance travels with the config


# --- model cards -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["vit", "clip", "llava"])
def test_save_pretrained_writes_a_model_card(tmp_path, family):
    models = {
        "vit": lambda: vlmhub.ViTForImageClassification(vlmhub.ViTConfig(**TINY_VISION, num_labels=3)),
        "clip": lambda: vlmhub.CLIPModel(vlmhub.CLIPConfig(vision_config=TINY_VISION, text_config=dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=99), projection_dim=16)),
        "llava": lambda: vlmhub.LlavaForConditionalGeneration(vlmhub.LlavaConfig(
            vision_config={k: v for k, v in LLAVA_VISION.items() if k != "model_type"}, text_config=LLAVA_TEXT,
            image_token_id=IMAGE, image_aspect_ratio="anyres", image_grid_pinpoints=PINPOINTS, patch_merge_type="spatial_unpad")),
    }
    model = models[family]()
    model.save_pretrained(tmp_path / "my-model")
    card = ModelCard.load(tmp_path / "my-model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags == ["vlmhub", family]
    total = sum(p.numel() for p in model.state_dict().values() if p is not None)
    tokens = {"vit": "17 (16 patches", "clip": "17 (16 patches", "llava": "52 to 88 (AnyRes"}[family]
    assert tokens in card.text and "Saved with vlmhub; not converted" in card.text
    assert 'from_pretrained("my-model")' in card.text and f"{total / 1e3:.2f} K" in card.text
    pipeline = {"vit": "image-classification", "clip": "zero-shot-image-classification", "llava": "image-text-to-text"}
    assert card.data.pipeline_tag == pipeline[family]
    if family == "llava":  # ToMe merging is counted (4 fewer tokens in each of 3 or 5 views of 16) and named
        merged = dict(patch_merge_type="flat", visual_token_merge=4)
        tome = hub._llava_tokens(vlmhub.LlavaConfig.from_dict(model.config.to_dict() | merged))
        assert tome.startswith("36 to 60 (AnyRes") and tome.endswith("ToMe merges 4 tokens per view)")


def test_card_renders_the_parity_measured_during_conversion(tmp_path):
    sharded(hf_llava(next_=True), tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "out"), "--check"]) == 0
    provenance = json.loads((tmp_path / "out" / "config.json").read_text())["vlmhub_provenance"]
    parity = provenance["parity"]
    assert parity["reference"].startswith("transformers.LlavaNextForConditionalGeneration")
    assert parity["max_abs_diff"] <= ATOL and set(parity["outputs"]) >= {"logits"}
    card = ModelCard.load(tmp_path / "out" / "README.md").text
    assert f"max abs diff {parity['max_abs_diff']:.2e}" in card and f"logits {parity['outputs']['logits']:.2e}" in card
    # the number is what the two implementations give now on the recorded input, measured again
    again = hub.parity_check(AutoModelForImageTextToText.from_pretrained(tmp_path / "out"), "transformers", tmp_path / "hf")
    assert again["max_abs_diff"] == parity["max_abs_diff"] and again["inputs"] == parity["inputs"]


def test_conversion_without_a_reference_records_the_source_only(tmp_path):
    transformers.ViTModel(transformers.ViTConfig(**TINY_VISION)).save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Converted from `{tmp_path / 'hf'}`" in card and "No reference implementation was run" in card
    assert 'from_pretrained("out")' in card  # the final folder's name, not the temporary one


def test_a_hand_written_readme_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("# my notes")
    vlmhub.ViTModel(vlmhub.ViTConfig(**TINY_VISION)).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes"


def test_push_to_hub_uploads_our_card(tmp_path, monkeypatch):
    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            seen["files"] = {p.name: p.read_text() for p in __import__("pathlib").Path(folder_path).glob("*.md")}
            return "uploaded"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    model = vlmhub.ViTModel(vlmhub.ViTConfig(**TINY_VISION))
    assert model.push_to_hub("someone/tiny-vit") == "uploaded"
    assert 'from_pretrained("someone/tiny-vit")' in seen["files"]["README.md"]


def test_blip2_and_mllama_folders_load_through_our_classes(tmp_path):
    """The newer families' transformers-format folders (sharded) through our classes' from_pretrained."""
    from tests.conversion.test_blip2_conversion import hf_blip2, prompt_ids
    from tests.conversion.test_mllama_conversion import hf_model as hf_mllama
    from tests.conversion.test_mllama_conversion import inputs as mllama_inputs

    blip2 = hf_blip2("opt")
    ours = vlmhub.VlmhubBlip2ForConditionalGeneration.from_pretrained(sharded(blip2, tmp_path / "blip2")).eval()
    ids, mask = prompt_ids()
    x = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 16, 16))
    with torch.no_grad():
        assert max_diff(blip2(**x).logits, ours(**x).logits) <= ATOL
    mllama = hf_mllama()
    ours = vlmhub.MllamaForConditionalGeneration.from_pretrained(sharded(mllama, tmp_path / "mllama")).eval()
    x = mllama_inputs([(2, 2), (1, 2)])
    with torch.no_grad():
        assert max_diff(mllama(**x).logits, ours(**x).logits) <= ATOL


@pytest.mark.parametrize("arch", ["BlipForConditionalGeneration", "BlipForImageTextRetrieval"])
def test_blip_folder_and_processor_load_through_our_classes(tmp_path, arch):
    """transformers' BLIP (captioning and matching, sharded) with its BlipProcessor, through our classes."""
    from tests.conftest import FIXTURES
    from tests.conversion.test_blip_conversion import hf_config, randomized

    hf = randomized(getattr(transformers, arch)(hf_config()))
    folder = sharded(hf, tmp_path / "blip")
    bert = transformers.BertTokenizer(str(FIXTURES / "lavis-blip2-qformer" / "bert_tokenizer" / "vocab.txt"))
    theirs = transformers.BlipProcessor(transformers.BlipImageProcessorPil(size={"height": 16, "width": 16}), bert)
    theirs.save_pretrained(folder)
    captioning = arch == "BlipForConditionalGeneration"
    cls = vlmhub.VlmhubBlipForConditionalGeneration if captioning else vlmhub.VlmhubBlipForImageTextRetrieval
    ours, processor = cls.from_pretrained(folder).eval(), vlmhub.VlmhubBlipProcessor.from_pretrained(folder)
    assert type(ours) is cls and type(processor) is vlmhub.VlmhubBlipProcessor
    assert type(vlmhub.VlmhubBlipImageProcessor.from_pretrained(folder)) is vlmhub.VlmhubBlipImageProcessor
    kwargs = dict(images=[image(20, 30), image(40, 24, 1)], text=["a red bird", "two dogs on the grass"], padding=True,
                  return_tensors="pt")
    a, b = theirs(**kwargs), processor(**kwargs)
    assert a.keys() == b.keys() and torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"]) and max_diff(a["pixel_values"], b["pixel_values"]) <= 1e-6
    output = "logits" if captioning else "itm_score"
    with torch.no_grad():
        assert max_diff(getattr(hf(**a), output), getattr(ours(**b), output)) <= ATOL


def test_blip2_processor_from_a_transformers_folder(tmp_path):
    """transformers' Blip2Processor saved beside a blip-2 config.json loads as our processor (ours inside too)."""
    from tests.conversion.test_blip2_conversion import Q, hf_blip2

    hf_blip2("opt").config.save_pretrained(tmp_path)
    theirs = transformers.Blip2Processor(transformers.BlipImageProcessorPil(size={"height": 16, "width": 16}),
                                         tokenizer(), num_query_tokens=Q)
    theirs.save_pretrained(tmp_path)
    ours = vlmhub.VlmhubBlip2Processor.from_pretrained(tmp_path)
    assert type(ours) is vlmhub.VlmhubBlip2Processor and type(ours.image_processor) is vlmhub.VlmhubBlip2ImageProcessor
    assert type(vlmhub.VlmhubBlip2ImageProcessor.from_pretrained(tmp_path)) is vlmhub.VlmhubBlip2ImageProcessor
    kwargs = dict(images=[image(20, 30), image(40, 24, 1)], text=["what is this ?", "a red circle"], padding=True,
                  return_tensors="pt")
    a, b = theirs(**kwargs), ours(**kwargs)
    assert a["input_ids"].shape[1] > Q and torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"]) and max_diff(a["pixel_values"], b["pixel_values"]) <= 1e-6


def test_mllama_processor_from_a_transformers_folder(tmp_path):
    """transformers' MllamaProcessor saved beside an mllama config.json loads as our processor (ours inside too)."""
    from tests.processing.test_mllama_processing import CLIP
    from tests.processing.test_mllama_processing import image as mllama_image
    from tests.processing.test_mllama_processing import tokenizer as mllama_tokenizer

    transformers.MllamaConfig().save_pretrained(tmp_path)
    theirs = transformers.MllamaProcessor(
        transformers.MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=4, **CLIP), mllama_tokenizer())
    theirs.save_pretrained(tmp_path)
    ours = vlmhub.MllamaProcessor.from_pretrained(tmp_path)
    assert type(ours) is vlmhub.VlmhubMllamaProcessor and type(ours.image_processor) is vlmhub.VlmhubMllamaImageProcessor
    assert type(vlmhub.MllamaImageProcessor.from_pretrained(tmp_path)) is vlmhub.VlmhubMllamaImageProcessor
    texts = ["<|image|>describe this", "compare <|image|> and <|image|> that ?"]
    images = [[mllama_image(80, 30)], [mllama_image(30, 20, 1), mllama_image(20, 70, 2)]]
    a = theirs(images=images, text=texts, padding=True, return_tensors="pt")
    b = ours(images=images, text=texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"):
        assert torch.equal(a[key], b[key]), key
    assert max_diff(a["pixel_values"], b["pixel_values"]) <= 1e-6


def test_model_cards_count_what_the_connector_gives_the_language_model():
    blip2 = vlmhub.VlmhubBlip2Config(vision_config=TINY_VISION, qformer_config=dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, num_query_tokens=5), text_config=LLAVA_TEXT)
    assert hub.VISUAL_TOKENS[blip2.model_type](blip2).startswith("5 (the Q-Former's learned queries, from the tower's 17 tokens")
    assert dict(hub._tower_facts(blip2))["Config `qformer_config`"] == "vlmhub_qformer, 1 layers, width 32"  # no text path
    flamingo = vlmhub.VlmhubFlamingoConfig(vision_config=TINY_VISION, text_config=LLAVA_TEXT, num_latents=7, media_token_id=3, cross_attn_every_n_layers=1,
                                           eoc_token_id=4)
    assert hub.VISUAL_TOKENS[flamingo.model_type](flamingo).startswith("7 (Perceiver latents")
    mllama = vlmhub.VlmhubMllamaConfig(vision_config=TINY_VISION | dict(num_global_layers=1, max_num_tiles=4, intermediate_layers_indices=[0]),
                                       text_config=LLAVA_TEXT, cross_attention_layers=[1], image_token_index=LLAVA_TEXT["vocab_size"])
    assert hub.VISUAL_TOKENS[mllama.model_type](mllama).startswith("17 per tile, up to 4 tiles (16 patches of 4 px")
