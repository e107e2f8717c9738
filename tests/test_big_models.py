"""Large-checkpoint loading with a local folder as the Hub (the code path of a Hub id), for every family: sharded save
and reload, device_map="auto" with a tiny max_memory (offload to CPU and disk) still forwarding and generating the
same, dtype="auto", attn_implementation reaching the vision tower. The tiny models and their inputs are
tests/test_remote_code.py's (`tiny_family`)."""

import copy
import json

import pytest
import torch
import transformers

import vlmhub
from tests.test_hub import IMAGE, LLAVA_TEXT, LLAVA_VISION, hf_llava, llava_inputs
from tests.test_remote_code import CASES, OUTPUT_KEYS, family_inputs, nest, sample_images, tiny_family
from vlmhub.modeling.blocks import attention

GENERATE = dict(max_new_tokens=3, do_sample=False)
SHARD = "30KB"  # several shards for every tiny model
FAMILIES = sorted(CASES)


class Family:
    """A tiny family saved once (sharded), with its processed inputs."""

    def __init__(self, name: str, folder):
        self.name, self.folder = name, folder
        self.model, processor, auto_model, layout, kwargs = tiny_family(name)
        self.auto = getattr(transformers, auto_model)
        self.inputs = family_inputs(processor, nest(sample_images(), layout), kwargs)
        self.model.save_pretrained(folder, max_shard_size=SHARD)

    @property
    def generative(self) -> bool:
        return self.auto is transformers.AutoModelForImageTextToText

    def outputs(self, model) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = model(**self.inputs)
        return {k: getattr(out, k) for k in OUTPUT_KEYS if getattr(out, k, None) is not None}

    def generate(self, model) -> torch.Tensor:
        return model.generate(**self.inputs, **GENERATE)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root, made = tmp_path_factory.mktemp("families"), {}

    def get(name: str) -> Family:
        if name not in made:
            made[name] = Family(name, root / name)
        return made[name]

    return get


def load_offloaded(auto, folder, cpu_bytes: int, offload_folder):
    """device_map="auto" with only `cpu_bytes` of CPU memory: part of the model must go to disk."""
    model = auto.from_pretrained(folder, device_map="auto", max_memory={"cpu": cpu_bytes}, offload_folder=offload_folder)
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}, model.hf_device_map
    return model


def assert_same_outputs(family: Family, model) -> None:
    expected, got = family.outputs(family.model), family.outputs(model)
    assert expected and expected.keys() == got.keys()
    for key, value in expected.items():
        assert torch.equal(value, got[key]), (family.name, key, max_diff(value, got[key]))


@pytest.mark.parametrize("name", FAMILIES)
def test_sharded_save_reloads_identically(saved, name):
    family = saved(name)
    index = json.loads((family.folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = family.auto.from_pretrained(family.folder)
    assert type(loaded) is type(family.model)
    mine, theirs = family.model.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("name", FAMILIES)
def test_device_map_auto_with_tiny_max_memory_offloads_and_still_runs(saved, name, tmp_path):
    family = saved(name)
    offloaded = load_offloaded(family.auto, family.folder, int(0.6 * model_bytes(family.model)), tmp_path)
    assert_same_outputs(family, offloaded)
    if family.generative:
        assert torch.equal(family.generate(offloaded), family.generate(family.model))


def test_llava_offload_splitting_the_language_model(tmp_path):
    """With 0.8 of the bytes on CPU, language-model layers go to disk (less splits the vision tower)."""
    model = tiny_llava()
    model.save_pretrained(tmp_path / "repo", max_shard_size=SHARD)
    inputs = llava_inputs(model, next_=False)
    offloaded = load_offloaded(transformers.AutoModelForImageTextToText, tmp_path / "repo", int(0.8 * model_bytes(model)),
                               tmp_path / "offload")
    assert any(k.startswith("language_model") and v == "disk" for k, v in offloaded.hf_device_map.items())
    assert torch.equal(offloaded.generate(**inputs, **GENERATE, pad_token_id=0), model.generate(**inputs, **GENERATE, pad_token_id=0))


def test_transformers_format_folder_offloads_too(tmp_path):
    hf = hf_llava()
    hf.save_pretrained(tmp_path / "hf", max_shard_size=SHARD)
    ours = load_offloaded(vlmhub.LlavaForConditionalGeneration, tmp_path / "hf", int(0.5 * model_bytes(hf)), tmp_path / "offload")
    inputs = llava_inputs(ours, next_=False)
    assert torch.equal(ours.generate(**inputs, **GENERATE, pad_token_id=0), hf.generate(**inputs, **GENERATE, pad_token_id=0))


@pytest.mark.parametrize("name", FAMILIES)
def test_dtype_auto_takes_the_saved_dtype(saved, name, tmp_path):
    family = saved(name)
    copy.deepcopy(family.model).to(torch.bfloat16).save_pretrained(tmp_path)
    model = family.auto.from_pretrained(tmp_path, dtype="auto")
    floats = {n: p.dtype for n, p in model.named_parameters() if p.is_floating_point()}
    assert set(floats.values()) == {torch.bfloat16}, {n: d for n, d in floats.items() if d != torch.bfloat16}
    assert family.auto.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32


def test_dtype_auto_on_a_transformers_format_folder(tmp_path):
    hf_llava().to(torch.bfloat16).save_pretrained(tmp_path)
    model = vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype="auto")
    assert model.dtype == torch.bfloat16 and model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).dtype == torch.float32


def eager_callers(monkeypatch) -> list:
    """The attention modules that run our eager kernel from now on (in call order)."""
    calls, original = [], attention.eager_attention
    monkeypatch.setattr(attention, "eager_attention", lambda module, *a, **k: calls.append(module) or original(module, *a, **k))
    return calls


def vision_attention(model) -> list:
    """Our attention modules of the vision tower: those configured by the vision (sub-)config."""
    config = model.config.vision_config if "vision_config" in model.config.sub_configs else model.config
    return [m for m in model.modules() if isinstance(m, attention.Attention) and m.config is config]


def assert_eager_reaches_the_tower(folder, auto, inputs, monkeypatch) -> None:
    sdpa = auto.from_pretrained(folder)
    eager = auto.from_pretrained(folder, attn_implementation="eager")
    subs = [getattr(eager.config, key) for key in eager.config.sub_configs if getattr(eager.config, key) is not None]
    assert all(c._attn_implementation == "eager" for c in [eager.config, *subs])
    assert all(getattr(sdpa.config, key)._attn_implementation == "sdpa" for key in sdpa.config.sub_configs if getattr(sdpa.config, key))
    calls, ran = eager_callers(monkeypatch), set()
    for module in vision_attention(eager):  # the tower's layers that run (LLaVA stops before the last)
        module.register_forward_pre_hook(lambda m, args: ran.add(id(m)))
    with torch.no_grad():
        reference = sdpa(**inputs)
        assert calls == []  # sdpa: the eager kernel is not used
        out = eager(**inputs)
    assert ran and ran <= {id(m) for m in calls}  # every tower attention that ran used the eager kernel
    main = next(k for k in OUTPUT_KEYS if getattr(reference, k, None) is not None)
    assert max_diff(getattr(reference, main), getattr(out, main)) <= 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_attn_implementation_reaches_the_vision_tower(saved, name, monkeypatch):
    family = saved(name)
    assert_eager_reaches_the_tower(family.folder, family.auto, family.inputs, monkeypatch)


def test_attn_implementation_reaches_the_vision_tower_of_a_transformers_format_folder(tmp_path, monkeypatch):
    hf_llava().save_pretrained(tmp_path)
    inputs = llava_inputs(vlmhub.LlavaForConditionalGeneration.from_pretrained(tmp_path), next_=False)
    assert_eager_reaches_the_tower(tmp_path, vlmhub.LlavaForConditionalGeneration, inputs, monkeypatch)


def tiny_llava():
    vision = {k: v for k, v in LLAVA_VISION.items() if k != "model_type"}
    config = vlmhub.LlavaConfig(vision_config=vision, text_config=LLAVA_TEXT, image_token_id=IMAGE, image_aspect_ratio="square")
    return vlmhub.LlavaForConditionalGeneration(config).eval()


def model_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()
