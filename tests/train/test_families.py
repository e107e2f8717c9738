"""Fine-tuning every generative family besides LLaVA (test_finetune.py) on CPU with tiny models: BLIP-2 (OPT and Llama
language models), MiniGPT-4, mPLUG-Owl, Mllama and Flamingo. For each: the collator's labels cover only the answers and
its prompt ids, pixels and masks equal the processor's at inference; a padded batch gives each sample's own logits;
stage 1 trains only the connector; 4-bit + LoRA(q_proj, v_proj) for 30 steps lowers the loss, with LoRA only on the
language model's self-attention and the connector trained in full; the adapter reloads to the same logits and merges.

Every layer that 4-bit quantises is at least 64 wide: bitsandbytes' CPU inference repacking (AVX512-BF16) fails on
narrower ones. One thread: these models are so small that a second one only waits on a loaded machine.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlmhub
from vlmhub.data import vocab
from vlmhub.processing.blip2 import VlmhubBlip2ImageProcessor, VlmhubBlip2Processor
from vlmhub.processing.flamingo import VlmhubFlamingoImageProcessor, VlmhubFlamingoProcessor
from vlmhub.processing.minigpt4 import VlmhubMiniGPT4ImageProcessor, VlmhubMiniGPT4Processor
from vlmhub.processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor
from vlmhub.processing.mplug_owl import VlmhubMplugOwlImageProcessor, VlmhubMplugOwlProcessor
from vlmhub.train.cli import main as finetune
from vlmhub.train.cli import load_connector, parser, run_train
from vlmhub.train.data import ConversationCollator, load_records, to_messages
from vlmhub.train.setup import VISION_SCOPES, apply_stage, connector_paths, load_for_training, vision_tower_paths

SIZE = 28  # scenes images
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, image_size=SIZE,
              patch_size=7)
QFORMER = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, num_query_tokens=4)
TEMPLATE_WORDS = ["question", "answer", "short", "human", "ai", "following", "conversation", "gives"]
TEMPLATE_TOKENS = ["<|endofchunk|>", "###", "<Img>", "</Img>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                   "<|image|>"]  # <|image|> last: Mllama's image token is the first id past its vocabulary


def tokenizer():
    tok = vocab.build_tokenizer(extra_words=TEMPLATE_WORDS)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", *TEMPLATE_TOKENS]})
    return tok


def text_config(tok, kind="llama", **overrides):
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if kind == "opt":
        return common | dict(model_type="opt", ffn_dim=128, word_embed_proj_dim=64) | overrides
    return common | dict(model_type="llama", intermediate_size=128, num_key_value_heads=2) | overrides


def square(cls, **kwargs):
    return cls(size={"height": SIZE, "width": SIZE}, **kwargs)


def blip2(tok, kind):
    processor = VlmhubBlip2Processor(square(VlmhubBlip2ImageProcessor), tok, num_query_tokens=4)
    config = vlmhub.VlmhubBlip2Config(vision_config=VISION, qformer_config=QFORMER, text_config=text_config(tok, kind),
                                      image_token_id=processor.image_token_id)
    return vlmhub.VlmhubBlip2ForConditionalGeneration(config), processor


def minigpt4(tok):
    processor = VlmhubMiniGPT4Processor(square(VlmhubMiniGPT4ImageProcessor), tok, num_image_tokens=4)
    config = vlmhub.VlmhubMiniGPT4Config(vision_config=VISION, qformer_config=QFORMER, text_config=text_config(tok),
                                         image_token_id=processor.image_token_id)
    return vlmhub.VlmhubMiniGPT4ForConditionalGeneration(config), processor


def mplug_owl(tok):
    processor = VlmhubMplugOwlProcessor(square(VlmhubMplugOwlImageProcessor, crop_size={"height": SIZE, "width": SIZE}),
                                        tok, num_image_tokens=5)
    config = vlmhub.VlmhubMplugOwlConfig(vision_config=VISION, abstractor_config=QFORMER, text_config=text_config(tok),
                                         image_token_id=processor.image_token_id)
    return vlmhub.VlmhubMplugOwlForConditionalGeneration(config), processor


def mllama(tok):
    """14 px tiles (a 28 px image is a 2x2 grid), cross-attention before the second self-attention layer."""
    image = tok.convert_tokens_to_ids("<|image|>")
    image_processor = VlmhubMllamaImageProcessor(size={"height": 14, "width": 14}, max_image_tiles=4)
    processor = VlmhubMllamaProcessor(image_processor, tok)
    vision = VISION | dict(num_hidden_layers=2, num_global_layers=1, image_size=14, intermediate_layers_indices=[1],
                           max_num_tiles=4)
    config = vlmhub.VlmhubMllamaConfig(vision_config=vision, text_config=text_config(tok, vocab_size=image),
                                       cross_attention_layers=[1], image_token_index=image)
    return vlmhub.VlmhubMllamaForConditionalGeneration(config), processor


def flamingo(tok):
    processor = VlmhubFlamingoProcessor(VlmhubFlamingoImageProcessor(size={"shortest_edge": SIZE},
                                                                     crop_size={"height": SIZE, "width": SIZE}), tok)
    config = vlmhub.VlmhubFlamingoConfig(
        vision_config=VISION, text_config=text_config(tok), cross_attn_every_n_layers=2, cross_attn_num_heads=2,
        cross_attn_head_dim=16, perceiver_num_layers=1, perceiver_num_heads=2, perceiver_head_dim=16, num_latents=4,
        media_token_id=processor.image_token_id, eoc_token_id=processor.end_of_chunk_token_id)
    return vlmhub.VlmhubFlamingoForConditionalGeneration(config), processor


@dataclass(frozen=True)
class Family:
    build: Callable  # tokenizer -> (model, processor)
    connector: tuple  # the model's connector_modules: what stage 1 trains
    answer_end: str  # what the chat template writes after every answer (trained on, so the model learns to stop)
    nested: bool = False  # the processor takes images nested per sample
    call: tuple = (("add_special_tokens", False),)  # processor kwargs for a chat-template prompt (it holds BOS)
    images: int = 2  # most images a sample may hold
    # a text-only row of an image batch gives the logits it gives alone (not Flamingo: its gated feed-forward runs on
    # every row once a batch holds media, as in open_flamingo)
    text_only_in_image_batch: bool = True


FAMILIES = {
    "blip2-opt": Family(lambda tok: blip2(tok, "opt"), ("qformer", "language_projection"), "</s>", images=1),
    "blip2-llama": Family(lambda tok: blip2(tok, "llama"), ("qformer", "language_projection"), "</s>", images=1),
    "minigpt4": Family(minigpt4, ("llama_proj",), "###", call=()),
    "mplug_owl": Family(mplug_owl, ("abstractor",), "</s>", call=()),
    "mllama": Family(mllama, ("multi_modal_projector", "gated_cross_attn"), "<|eot_id|>", nested=True),
    "flamingo": Family(flamingo, ("perceiver", "gated_cross_attn"), "<|endofchunk|>", nested=True,
                       text_only_in_image_batch=False),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def folder(family, tmp_path_factory):
    torch.manual_seed(0)
    model, processor = FAMILIES[family].build(tokenizer())
    with torch.no_grad():  # a frozen head at the 0.02 init caps the logits near uniform; a wider one stands in for a
        model.get_output_embeddings().weight.normal_(0, 0.3)  # trained head
    out = tmp_path_factory.mktemp(family)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def questions(tiny_scenes, tmp_path_factory):
    """The scenes records without the long descriptions (short sequences train fast)."""
    records = [r for r in load_records(tiny_scenes / "train.json") if "in detail" not in r["conversations"][0]["value"]]
    path = tmp_path_factory.mktemp("questions") / "train.json"
    path.write_text(json.dumps(records))
    return path


def train_args(folder, data, images, out, *extra):
    return ["train", "--model", str(folder), "--data", str(data), "--image-folder", str(images), "--output", str(out),
            "--batch-size", "4", "--lr", "2e-2", *map(str, extra)]


@pytest.fixture(scope="module")
def trained(folder, questions, tiny_scenes, tmp_path_factory):
    """30 steps of 4-bit + LoRA(q_proj, v_proj) with the connector in full, through the CLI's train path."""
    out = tmp_path_factory.mktemp("qlora")
    a = parser().parse_args(train_args(folder, questions, tiny_scenes / "images", out, "--steps", 30, "--load-in-4bit"))
    result = run_train(a)
    return {"out": out, "model": result["model"], "report": result["trainable"],
            "losses": [h["loss"] for h in result["history"]]}


def probe(folder, scenes):
    processor = AutoProcessor.from_pretrained(folder)
    batch = ConversationCollator(processor, scenes / "images")(load_records(scenes / "test.json")[:2])
    return {k: v for k, v in batch.items() if k != "labels"}


def connector_parameters(model) -> dict:
    paths = connector_paths(model)
    return {n: p for n, p in model.named_parameters() if any(n.startswith(path + ".") for path in paths)}


def test_labels_cover_only_the_answers_and_prompts_match_inference(family, folder, tiny_scenes):
    spec, processor = FAMILIES[family], AutoProcessor.from_pretrained(folder)
    record = next(r for r in load_records(tiny_scenes / "train.json") if len(r["conversations"]) > 2)  # multi-turn
    sample = ConversationCollator(processor, tiny_scenes / "images").encode(record)
    answers = [t["value"] + spec.answer_end for t in record["conversations"] if t["from"] == "gpt"]
    expected = processor.tokenizer(" ".join(answers), add_special_tokens=False)["input_ids"]
    assert sample["input_ids"][sample["labels"] != -100].tolist() == expected
    # the prompt up to the first answer is what the processor makes of the chat template's prompt at inference
    image = str(tiny_scenes / "images" / record["image"])
    prompt = processor.apply_chat_template(to_messages(record)[:1], add_generation_prompt=True)
    ours = processor(images=[[image]] if spec.nested else [image], text=prompt, return_tensors="pt", **dict(spec.call))
    n = ours["input_ids"].shape[1]
    assert torch.equal(sample["input_ids"][:n], ours["input_ids"][0]) and (sample["labels"][:n] == -100).all()
    assert torch.equal(sample["pixel_values"], ours["pixel_values"])
    if family == "mllama":
        assert torch.equal(sample["cross_attention_mask"][:, :n], ours["cross_attention_mask"])
        assert torch.equal(sample["aspect_ratio_ids"], ours["aspect_ratio_ids"])
        assert ours["aspect_ratio_ids"].item() == 6  # a 2x2 grid of 14 px tiles
    # a max_length that cuts the image tokens skips the sample and says why
    first_image = sample["input_ids"].tolist().index(processor.image_token_id)
    collator = ConversationCollator(processor, tiny_scenes / "images", max_length=first_image)
    assert collator.encode(record) is None and "image tokens end at" in collator.skipped.reasons[record["id"]]


def open_gates(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_gate"):
                p.fill_(0.8)  # cross-attention starts closed; open it so the images matter
    return model


def test_padded_batch_gives_each_sample_its_own_logits(family, folder, tiny_scenes):
    """Right padding, and for Mllama / Flamingo absent images padding the image axis, change no real position."""
    spec, processor = FAMILIES[family], AutoProcessor.from_pretrained(folder)
    a, b = [r for r in load_records(tiny_scenes / "test.json") if len(r["conversations"]) == 2][:2]
    ask = [{"from": "gpt", "value": "two"}]
    records = [a, {"id": "two-images", "image": [a["image"], b["image"]],
                   "conversations": [{"from": "human", "value": "<image>\n<image>\nHow many shapes are there?"}, *ask]}
               if spec.images > 1 else b]
    if spec.text_only_in_image_batch:
        records.append({"id": "text", "conversations": [{"from": "human", "value": "Is there a red circle?"}, *ask]})
    collator = ConversationCollator(processor, tiny_scenes / "images")
    model = open_gates(AutoModelForImageTextToText.from_pretrained(folder)).eval()
    with torch.no_grad():
        batch = collator(records)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, record in enumerate(records):
            alone = {k: v for k, v in collator([record]).items() if k != "labels"}
            n = alone["input_ids"].shape[1]
            assert batch["attention_mask"][i].sum() == n
            torch.testing.assert_close(logits[i, :n], model(**alone).logits[0], atol=1e-5, rtol=1e-5)


def test_stage1_trains_only_the_connector(family, folder, questions, tiny_scenes, tmp_path):
    base = AutoModelForImageTextToText.from_pretrained(folder)
    staged = apply_stage(AutoModelForImageTextToText.from_pretrained(folder), 1)
    connector = connector_parameters(staged)
    assert connector and {n for n, p in staged.named_parameters() if p.requires_grad} == set(connector)
    result = run_train(parser().parse_args(train_args(folder, questions, tiny_scenes / "images", tmp_path, "--stage", 1,
                                                      "--steps", 2)))
    before = dict(base.named_parameters())
    changed = {n for n, p in result["model"].named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(connector)  # every connector tensor, nothing else
    saved = load_file(tmp_path / "connector.safetensors")
    assert set(saved) == {k for k in base.state_dict() if any(k.startswith(p + ".") for p in connector_paths(base))}
    load_connector(base, tmp_path / "connector.safetensors")  # what `train --stage 2 --connector` starts from
    assert all(torch.equal(p, dict(result["model"].named_parameters())[n]) for n, p in base.named_parameters())
    print(f"\n{family} stage 1: {sum(p.numel() for p in connector.values()):,} connector parameters "
          f"({len(changed)}/{len(connector)} tensors changed in 2 steps)")


def test_full_stage_can_keep_the_image_tower_frozen(family, folder, questions, tiny_scenes, tmp_path):
    model = apply_stage(AutoModelForImageTextToText.from_pretrained(folder), "full", freeze_vision=True)
    towers = vision_tower_paths(model)
    assert towers and all(path.rsplit(".", 1)[-1] in ("vision_tower", "vision_model") for path in towers)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if any(n.startswith(path + ".") for path in towers)}
    assert all(p.requires_grad for p in connector_parameters(model).values())  # BLIP-2's ln_vision trains too
    with pytest.raises(SystemExit, match="--freeze-vision is for --stage full"):
        run_train(parser().parse_args(train_args(folder, questions, tiny_scenes / "images", tmp_path, "--stage", 2,
                                                 "--freeze-vision")))


def test_qlora_lowers_the_loss_and_trains_only_lora_on_the_lm_and_the_connector(family, folder, trained):
    losses = trained["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert len(losses) == 30 and last < 0.8 * first, losses
    model, report = trained["model"], trained["report"]
    base = AutoModelForImageTextToText.from_pretrained(folder)
    names, paths = tuple(base.connector_modules), connector_paths(base)
    assert names == FAMILIES[family].connector
    lm_targets = [m for n, m in base.named_modules() if n.startswith("language_model.")
                  and n.endswith((".q_proj", ".v_proj")) and not any(n.startswith(p + ".") for p in paths)]
    lora = sum(8 * (m.in_features + m.out_features) for m in lm_targets)  # rank 8: A (8, in) + B (out, 8)
    connector = connector_parameters(base)
    assert report["by_kind"] == {"lora": lora, "connector": sum(p.numel() for p in connector.values())}
    trainable = [n.removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad]
    wrapped = {n.split(".lora_")[0] for n in trainable if ".lora_" in n}
    assert len(wrapped) == len(lm_targets)  # the language model's self-attention q_proj / v_proj, nothing else:
    assert all(n.startswith("language_model.") and n.endswith(("self_attn.q_proj", "self_attn.v_proj"))
               for n in wrapped)
    assert not any(n.startswith(VISION_SCOPES) or any(f".{c}." in f".{n}" for c in names) for n in wrapped)
    assert all(".modules_to_save.default." in n for n in trainable if ".lora_" not in n)
    # the whole connector trained (gradients reach it through the 4-bit model's gradient checkpointing)
    now = dict(model.named_parameters())
    def trained_copy(name):  # peft keeps the trained connector at <path>.modules_to_save.default.<rest>
        path = next(p for p in paths if name.startswith(p + "."))
        return now[f"base_model.model.{path}.modules_to_save.default.{name[len(path) + 1:]}"]
    assert [n for n, p in connector.items() if torch.equal(p, trained_copy(n))] == []
    adapter = load_file(trained["out"] / "adapter_model.safetensors")
    assert any(".lora_A" in k for k in adapter) and any(f".{c}." in f".{k}" for k in adapter for c in names)
    print(f"\n{family} 4-bit + LoRA: loss first-5 {first:.3f} last-5 {last:.3f}; trainable {report['trainable']:,} of "
          f"{report['total']:,} (LoRA {lora:,}, connector {report['by_kind']['connector']:,})")


def test_adapter_reloads_to_the_same_logits_and_merges(family, folder, trained, tiny_scenes, tmp_path):
    x = probe(folder, tiny_scenes)
    reloaded = PeftModel.from_pretrained(load_for_training(folder, load_in_4bit=True)[0], trained["out"]).eval()
    with torch.no_grad():
        reload_diff = (trained["model"].eval()(**x).logits - reloaded(**x).logits).abs().max().item()
    assert reload_diff <= 1e-5
    assert finetune(["merge", "--model", str(folder), "--adapter", str(trained["out"]), "--output", str(tmp_path)]) == 0
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(folder), trained["out"]).eval()
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    plain = AutoModelForImageTextToText.from_pretrained(folder).eval()
    with torch.no_grad():
        a, m, p = adapted(**x).logits, merged(**x).logits, plain(**x).logits
    merge_diff, change = (a - m).abs().max().item(), (a - p).abs().max().item()
    assert type(merged) is type(plain) and merge_diff <= 1e-4 and change > 1e-2  # the adapter changed the model
    print(f"\n{family}: reload max |diff| {reload_diff:.1e}, merge max |diff| {merge_diff:.1e} "
          f"(the adapter moved the logits by up to {change:.1f})")
