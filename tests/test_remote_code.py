"""Remote-code export: flat copies of our modules + auto_map load every landed family where vlmhub is not installed.

One subprocess loads all three families (ViT, CLIP, LLaVA) with `trust_remote_code=True`, `import vlmhub` blocked and
HF_HUB_OFFLINE=1, and writes its outputs; they must equal the in-process ones.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import vlmhub
from tests.conftest import tiny_text, tiny_vision
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.hub import export_remote_code

WORDS = ["a", "photo", "of", "red", "circle", "two", "blue", "squares", "what", "is", "this", "?", "USER:", "ASSISTANT:"]
LLAVA_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
LLAVA_TEXT = dict(model_type="llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  vocab_size=24, pad_token_id=0, eos_token_id=2, bos_token_id=1)
CROP16 = dict(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


def families():
    """name -> (model, processor or image processor, processor call kwargs). Tiny and random."""
    vit = vlmhub.ViTForImageClassification(vlmhub.ViTConfig(**tiny_vision(), num_labels=3))
    clip = vlmhub.CLIPModel(vlmhub.CLIPConfig(vision_config=tiny_vision(), text_config=tiny_text(vocab_size=24, eos_token_id=2),
                                              projection_dim=16))
    llava = vlmhub.LlavaForConditionalGeneration(vlmhub.LlavaConfig(
        vision_config=LLAVA_VISION, text_config=LLAVA_TEXT, image_token_id=4, image_aspect_ratio="pad"))
    crop28 = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return {
        "vit": (vit, vlmhub.ViTImageProcessor(size={"height": 16, "width": 16}), {}),
        "clip": (clip, vlmhub.CLIPProcessor(vlmhub.CLIPImageProcessor(**CROP16), word_tokenizer()),
                 {"text": ["a photo of a red circle", "two blue squares"], "padding": True}),
        "llava": (llava, vlmhub.LlavaProcessor(vlmhub.LlavaImageProcessor(image_aspect_ratio="pad", **crop28), word_tokenizer(), patch_size=7),
                  {"text": ["USER: <image> what is this ? ASSISTANT:", "USER: <image> a red circle ASSISTANT:"], "padding": True}),
    }


def run(model, processor, images, kwargs) -> dict[str, torch.Tensor]:
    """Processor outputs and the model's main outputs, as one flat dict of tensors."""
    batch = dict(processor(images=images, return_tensors="pt", **kwargs))
    with torch.no_grad():
        out = model(**batch)
    keys = [k for k in ("logits", "logits_per_image", "image_embeds", "text_embeds") if getattr(out, k, None) is not None]
    return {**{f"in.{k}": v for k, v in batch.items()}, **{f"out.{k}": getattr(out, k) for k in keys}}


CHILD = textwrap.dedent("""
    import importlib.abc, json, sys
    from pathlib import Path

    class Hide(importlib.abc.MetaPathFinder):  # vlmhub is "not installed"
        def find_spec(self, name, path=None, target=None):
            if name == "vlmhub" or name.startswith("vlmhub."):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Hide())
    sys.path = [p for p in sys.path if not (Path(p) / "vlmhub").is_dir()]
    try:
        import vlmhub
        raise SystemExit("vlmhub is importable")
    except ImportError:
        pass

    import torch, transformers
    from PIL import Image
    from safetensors.torch import save_file

    root = Path(sys.argv[1])
    spec = json.loads((root / "spec.json").read_text())
    images = [Image.open(root / name) for name in spec["images"]]
    for family, (auto_model, auto_processor, kwargs) in spec["families"].items():
        folder = root / family
        model = getattr(transformers, auto_model).from_pretrained(folder, trust_remote_code=True).eval()
        processor = getattr(transformers, auto_processor).from_pretrained(folder, trust_remote_code=True)
        batch = dict(processor(images=images, return_tensors="pt", **kwargs))
        with torch.no_grad():
            out = model(**batch)
        keys = [k for k in ("logits", "logits_per_image", "image_embeds", "text_embeds") if getattr(out, k, None) is not None]
        tensors = {**{f"in.{k}": v for k, v in batch.items()}, **{f"out.{k}": getattr(out, k) for k in keys}}
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(root / f"{family}.out.safetensors"), metadata={"model": type(model).__module__ + "." + type(model).__name__})
    print("ok")
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Three exported folders, the images, and the in-process outputs."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("remote")
    rng = np.random.default_rng(0)
    names = []
    for i, (h, w) in enumerate([(20, 30), (40, 24)]):
        names.append(f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / names[-1])
    images = [Image.open(root / name) for name in names]
    expected, spec = {}, {"images": names, "families": {}}
    autos = {"vit": ("AutoModelForImageClassification", "AutoImageProcessor"), "clip": ("AutoModel", "AutoProcessor"),
             "llava": ("AutoModelForImageTextToText", "AutoProcessor")}
    for family, (model, processor, kwargs) in families().items():
        model.eval().save_pretrained(root / family)
        processor.save_pretrained(root / family)
        export_remote_code(root / family)
        expected[family] = run(model, processor, images, kwargs)
        spec["families"][family] = [*autos[family], kwargs]
    (root / "spec.json").write_text(json.dumps(spec))
    return root, expected


def test_fresh_process_without_vlmhub_loads_every_family(exported):
    root, expected = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf_home"), "TRANSFORMERS_VERBOSITY": "error",
        "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same thread count: same float reduction order, bit-equal outputs
    done = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    for family, tensors in expected.items():
        got = load_file(root / f"{family}.out.safetensors")
        assert set(got) == set(tensors), family
        for name, value in tensors.items():
            assert got[name].shape == value.shape and (got[name].float() - value.float()).abs().max() == 0, f"{family} {name}"


def test_auto_map_and_flat_files(exported):
    root, _ = exported
    config = json.loads((root / "llava" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_llava.VlmhubLlavaConfig",
        "AutoModel": "modeling_llava.VlmhubLlavaForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_llava.VlmhubLlavaForConditionalGeneration",
        "AutoImageProcessor": "image_processing_llava.VlmhubLlavaImageProcessor",
        "AutoProcessor": "processing_llava.VlmhubLlavaProcessor",
    }
    assert json.loads((root / "llava" / "processor_config.json").read_text())["auto_map"]["AutoProcessor"] == "processing_llava.VlmhubLlavaProcessor"
    assert "AutoImageProcessor" in json.loads((root / "vit" / "preprocessor_config.json").read_text())["auto_map"]
    for family in ("vit", "clip", "llava"):
        files = sorted((root / family).glob("*.py"))
        names = {f.stem for f in files}
        assert any(n.startswith("configuration_") for n in names) and any(n.startswith("modeling_") for n in names)
        assert any(n.startswith("image_processing_") for n in names)
        for f in files:  # what transformers' loader checks: same-folder relative imports, installed packages only
            assert set(get_relative_imports(f)) <= names, f
            assert "vlmhub" not in get_imports(f), f
    assert not (root / "llava" / "modeling_connectors_qformer.py").exists()  # re-exports followed: only what is used


def test_flat_copy_is_the_package_source_with_rewritten_imports(exported):
    """One source of truth: apart from import lines and the header, the copy is the module's own text."""
    root, _ = exported

    def body(text):
        drop = set()
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.ImportFrom) and node.level) or (isinstance(node, ast.Raise) and "remote-code copy" in ast.unparse(node)):
                drop |= set(range(node.lineno, node.end_lineno + 1))
        return [line for i, line in enumerate(text.splitlines(), 1) if i not in drop and not line.startswith("# Generated")]

    import vlmhub.modeling.llava as source

    assert body(Path(source.__file__).read_text()) == body((root / "llava" / "modeling_llava.py").read_text())
    pretrained = (root / "llava" / "modeling_pretrained.py").read_text()
    assert "from ..hub" not in pretrained and "belongs to the vlmhub package" in pretrained


def test_cli_remote_code_flag_writes_the_files(tmp_path):
    import transformers

    hf = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                      intermediate_size=64, image_size=16, patch_size=4)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "out"), "--remote-code"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_vit.VlmhubViTModel"
    assert (tmp_path / "out" / "modeling_vit.py").exists()
    assert "trust_remote_code=True" in (tmp_path / "out" / "README.md").read_text()


MODEL_ONLY_CHILD = textwrap.dedent("""
    import importlib.abc, sys, torch
    from pathlib import Path

    class Hide(importlib.abc.MetaPathFinder):  # vlmhub is "not installed"
        def find_spec(self, name, path=None, target=None):
            if name == "vlmhub" or name.startswith("vlmhub."):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Hide())
    sys.path = [p for p in sys.path if not (Path(p) / "vlmhub").is_dir()]
    import transformers
    from safetensors.torch import load_file, save_file

    root = Path(sys.argv[1])
    for name in sys.argv[2:]:
        model = transformers.AutoModelForImageTextToText.from_pretrained(root / name, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**load_file(str(root / f"{name}.in.safetensors"))).logits
        save_file({"logits": logits.contiguous()}, str(root / f"{name}.out.safetensors"))
    print("ok")
""")


def test_cross_attention_and_qformer_families_load_without_vlmhub(tmp_path):
    """Mllama (tiles + gated cross-attention inserted into the LM) and BLIP-2 (Q-Former): exported models load with
    trust_remote_code in a process without vlmhub and give bit-identical logits."""
    from tests.conversion.test_blip2_conversion import hf_blip2, prompt_ids
    from tests.conversion.test_mllama_conversion import hf_model as hf_mllama
    from tests.conversion.test_mllama_conversion import inputs as mllama_inputs

    ids, mask = prompt_ids()
    cases = {
        "blip2": (vlmhub.VlmhubBlip2ForConditionalGeneration, hf_blip2("opt"),
                  dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(2, 3, 16, 16))),
        "mllama": (vlmhub.MllamaForConditionalGeneration, hf_mllama(), mllama_inputs([(2, 2), (1, 2)])),
    }
    expected = {}
    for name, (cls, hf, x) in cases.items():
        hf.save_pretrained(tmp_path / f"hf-{name}")
        model = cls.from_pretrained(tmp_path / f"hf-{name}").eval()
        model.save_pretrained(tmp_path / name)
        export_remote_code(tmp_path / name)
        save_file({k: v.contiguous() for k, v in x.items()}, str(tmp_path / f"{name}.in.safetensors"))
        with torch.no_grad():
            expected[name] = model(**x).logits
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "TRANSFORMERS_VERBOSITY": "error",
        "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", MODEL_ONLY_CHILD, str(tmp_path), *cases], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    for name, logits in expected.items():
        assert torch.equal(load_file(tmp_path / f"{name}.out.safetensors")["logits"], logits), name
