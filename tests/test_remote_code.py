"""Remote-code export: flat copies of our modules + auto_map load every family where vlmhub is not installed.

Every family (ViT, CLIP, LLaVA, LLaVA-NeXT, BLIP, BLIP-2, MiniGPT-4, mPLUG-Owl, Flamingo, Mllama) is exported from a
tiny random model and its processor. One subprocess, with `import vlmhub` blocked and HF_HUB_OFFLINE=1, loads each
folder's model and processor with `trust_remote_code=True` through the Auto classes, runs the processor on the same
PIL images and texts and the model on what it returns, and writes both; they must equal the in-process ones bit for
bit. The child's code is this file's own `nest`, `family_inputs`, `family_outputs` and `run_exported` (sent as
source), so the two sides run the same steps. `tiny_family` also serves tests/test_big_models.py.
"""

import ast
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import vlmhub
from tests.conftest import tiny_text, tiny_vision
from tests.modeling.test_flamingo import tiny_config as flamingo_config
from tests.modeling.test_mllama import randomize
from tests.modeling.test_mllama import tiny_config as mllama_config
from vlmhub.conversion.__main__ import main as convert_cli
from vlmhub.hub import export_remote_code
from vlmhub.processing.blip import build_blip_tokenizer

WORDS = ["a", "photo", "of", "red", "circle", "two", "blue", "squares", "what", "is", "this", "?", "USER:", "ASSISTANT:"]
SPECIAL = ["<image>", "<|endofchunk|>"]  # ids 4, 5 (LLaVA-style image token, Flamingo's end of chunk)
VOCAB = ["<pad>", "<s>", "</s>", "<unk>", *SPECIAL, *WORDS, "<|image|>"]  # Mllama's image token: its LM's vocab_size
IMAGE, EOC, MLLAMA_IMAGE = 4, 5, len(VOCAB) - 1
TEXT = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(VOCAB), max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
            eos_token_id=2)
VISION28 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
QFORMER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, num_query_tokens=4)
SQUARE16, SQUARE28 = {"height": 16, "width": 16}, {"height": 28, "width": 28}
CROP16, CROP28 = dict(size={"shortest_edge": 16}, crop_size=SQUARE16), dict(size={"shortest_edge": 28}, crop_size=SQUARE28)
PINPOINTS = [[28, 56], [56, 28], [56, 56]]
BLIP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS[:11]]  # + [DEC], [ENC]
PROMPTS = ["what is this ?", "a red circle"]
LLAVA_CALL = {"text": [f"USER: <image> {p} ASSISTANT:" for p in PROMPTS], "padding": True}
IMAGE_SIZES = [(20, 30), (40, 24)]  # (height, width) of the two test images
OUTPUT_KEYS = ("logits", "logits_per_image", "image_embeds", "text_embeds")


def word_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": [*SPECIAL, "<|image|>"]})
    return fast


def llava(anyres: bool):
    model = vlmhub.LlavaForConditionalGeneration(vlmhub.LlavaConfig(
        vision_config=VISION28, text_config=TEXT, image_token_id=IMAGE, image_aspect_ratio="anyres" if anyres else "pad",
        image_grid_pinpoints=PINPOINTS if anyres else None, patch_merge_type="spatial_unpad" if anyres else "flat"))
    image_processor = vlmhub.LlavaImageProcessor(image_aspect_ratio="anyres" if anyres else "pad",
                                                 image_grid_pinpoints=PINPOINTS if anyres else None, **CROP28)
    processor = vlmhub.LlavaProcessor(image_processor, word_tokenizer(), patch_size=7,
                                      patch_merge_type=model.config.patch_merge_type)
    return model, processor


def blip():
    tokenizer = build_blip_tokenizer(BLIP_VOCAB)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=len(tokenizer),
                max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id, sep_token_id=3, pad_token_id=0)
    model = vlmhub.VlmhubBlipForConditionalGeneration(vlmhub.VlmhubBlipConfig(
        vision_config=tiny_vision(num_hidden_layers=1), text_config=text, image_text_hidden_size=16))
    return model, vlmhub.VlmhubBlipProcessor(vlmhub.VlmhubBlipImageProcessor(size=SQUARE16), tokenizer)


def minigpt4():
    processor = vlmhub.VlmhubMiniGPT4Processor(vlmhub.VlmhubMiniGPT4ImageProcessor(size=SQUARE16), word_tokenizer(),
                                               num_image_tokens=QFORMER["num_query_tokens"])
    model = vlmhub.VlmhubMiniGPT4ForConditionalGeneration(vlmhub.VlmhubMiniGPT4Config(
        vision_config=tiny_vision(), qformer_config=QFORMER, text_config=TEXT, image_token_id=IMAGE))
    return model, processor, "AutoModelForImageTextToText", [0, 1], {"text": [processor.format_prompt(p) for p in PROMPTS]}


# name -> () -> (model, processor, Auto model class, images (indices, nested per sample where the processor takes
# that), processor keyword arguments).
CASES = {
    "vit": lambda: (vlmhub.ViTForImageClassification(vlmhub.ViTConfig(**tiny_vision(), num_labels=3)),
                    vlmhub.ViTImageProcessor(size=SQUARE16), "AutoModelForImageClassification", [0, 1], {}),
    "clip": lambda: (
        vlmhub.CLIPModel(vlmhub.CLIPConfig(vision_config=tiny_vision(), projection_dim=16,
                                           text_config=tiny_text(vocab_size=len(VOCAB), bos_token_id=1, eos_token_id=2))),
        vlmhub.CLIPProcessor(vlmhub.CLIPImageProcessor(**CROP16), word_tokenizer()), "AutoModel", [0, 1],
        {"text": ["a photo of a red circle", "two blue squares"], "padding": True}),
    "llava": lambda: (*llava(anyres=False), "AutoModelForImageTextToText", [0, 1], LLAVA_CALL),
    "llava_next": lambda: (*llava(anyres=True), "AutoModelForImageTextToText", [0, 1], LLAVA_CALL),
    "blip": lambda: (*blip(), "AutoModelForImageTextToText", [0, 1], {"text": ["a photo of", "two blue squares"], "padding": True}),
    "blip2": lambda: (
        vlmhub.VlmhubBlip2ForConditionalGeneration(vlmhub.VlmhubBlip2Config(
            vision_config=tiny_vision(), qformer_config=QFORMER, text_config=TEXT, image_token_id=IMAGE)),
        vlmhub.VlmhubBlip2Processor(vlmhub.VlmhubBlip2ImageProcessor(size=SQUARE16), word_tokenizer(),
                                    num_query_tokens=QFORMER["num_query_tokens"]),
        "AutoModelForImageTextToText", [0, 1], {"text": PROMPTS, "padding": True}),
    "minigpt4": minigpt4,
    "mplug_owl": lambda: (
        vlmhub.VlmhubMplugOwlForConditionalGeneration(vlmhub.VlmhubMplugOwlConfig(
            vision_config=VISION28, abstractor_config=QFORMER | {"num_attention_heads": 2}, text_config=TEXT, image_token_id=IMAGE)),
        vlmhub.VlmhubMplugOwlProcessor(vlmhub.VlmhubMplugOwlImageProcessor(size=SQUARE28, crop_size=SQUARE28), word_tokenizer(),
                                       num_image_tokens=QFORMER["num_query_tokens"] + 1),
        "AutoModelForImageTextToText", [0, 1], {"text": [f"<image> {p}" for p in PROMPTS]}),
    "flamingo": lambda: (
        vlmhub.VlmhubFlamingoForConditionalGeneration(flamingo_config(TEXT, media_token_id=IMAGE, eoc_token_id=EOC)),
        vlmhub.VlmhubFlamingoProcessor(vlmhub.VlmhubFlamingoImageProcessor(**CROP16), word_tokenizer()),
        "AutoModelForImageTextToText", [[0, 1], [1]],
        {"text": ["<image> a photo <|endofchunk|> <image> what is this", "<image> two blue squares"], "padding": True}),
    "mllama": lambda: (
        vlmhub.MllamaForConditionalGeneration(mllama_config(
            text_config=TEXT | {"vocab_size": MLLAMA_IMAGE}, cross_attention_layers=[1], image_token_index=MLLAMA_IMAGE)),
        vlmhub.MllamaProcessor(vlmhub.MllamaImageProcessor(size=SQUARE28, max_image_tiles=4), word_tokenizer()),
        "AutoModelForImageTextToText", [[0], [1]], {"text": [f"<|image|> {p}" for p in PROMPTS], "padding": True}),
}


def tiny_family(name: str):
    """(model, processor, Auto model class name, image layout, processor kwargs) of a family: tiny, random far from
    init (norms around 1, gates open), in eval mode."""
    model, *rest = CASES[name]()
    return randomize(model).eval(), *rest


def sample_images() -> list:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in IMAGE_SIZES]


# --- the steps both processes run (the child receives their source) ----------------------------------------------------


def nest(images: list, layout):
    """Image indices (nested or flat) -> those images, in the same nesting."""
    return [nest(images, item) for item in layout] if isinstance(layout, list) else images[layout]


def family_inputs(processor, images, kwargs) -> dict:
    """The processor's outputs (all tensors) for the images and keyword arguments of a family."""
    batch = dict(processor(images=images, return_tensors="pt", **kwargs))
    loose = [k for k, v in batch.items() if not isinstance(v, torch.Tensor)]
    if loose:
        raise TypeError(f"{type(processor).__name__} returned non-tensor outputs {loose}")
    return batch


def family_outputs(model, processor, images, kwargs) -> dict:
    """Everything the processor returns and the model's main outputs on it, as one flat dict of tensors."""
    batch = family_inputs(processor, images, kwargs)
    with torch.no_grad():
        out = model(**batch)
    main = {f"out.{k}": getattr(out, k) for k in OUTPUT_KEYS if getattr(out, k, None) is not None}
    return {k: v.contiguous() for k, v in {**{f"in.{k}": v for k, v in batch.items()}, **main}.items()}


def run_exported(root):
    """For every family of spec.json: load model and processor from its folder with trust_remote_code, write outputs."""
    spec = json.loads((root / "spec.json").read_text())
    images = [Image.open(root / name) for name in spec.pop("images")]
    for family, (auto_model, auto_processor, layout, kwargs) in spec.items():
        folder = root / family
        model = getattr(transformers, auto_model).from_pretrained(folder, trust_remote_code=True).eval()
        processor = getattr(transformers, auto_processor).from_pretrained(folder, trust_remote_code=True)
        classes = {"model": type(model), "processor": type(processor)}
        save_file(family_outputs(model, processor, nest(images, layout), kwargs), str(root / f"{family}.out.safetensors"),
                  metadata={k: f"{c.__module__}.{c.__name__}" for k, c in classes.items()})


HIDE_VLMHUB = textwrap.dedent("""
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
""")
OUTPUT_KEYS_LINE = f"OUTPUT_KEYS = {OUTPUT_KEYS!r}\n"
CHILD = "\n".join([HIDE_VLMHUB, OUTPUT_KEYS_LINE, *map(inspect.getsource, (nest, family_inputs, family_outputs, run_exported)),
                   "run_exported(Path(sys.argv[1]))\nprint('ok')\n"])


# --- tests ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every family's exported folder, the test images, and the in-process outputs."""
    root = tmp_path_factory.mktemp("remote")
    spec = {"images": []}
    for i, image in enumerate(sample_images()):
        spec["images"].append(f"img{i}.png")
        image.save(root / spec["images"][-1])
    images, expected = [Image.open(root / name) for name in spec["images"]], {}
    for family in CASES:
        model, processor, auto_model, layout, kwargs = tiny_family(family)
        model.save_pretrained(root / family)
        processor.save_pretrained(root / family)
        export_remote_code(root / family)
        expected[family] = family_outputs(model, processor, nest(images, layout), kwargs)
        auto_processor = "AutoProcessor" if isinstance(processor, transformers.ProcessorMixin) else "AutoImageProcessor"
        spec[family] = [auto_model, auto_processor, layout, kwargs]
    (root / "spec.json").write_text(json.dumps(spec))
    return root, expected


def test_fresh_process_without_vlmhub_loads_every_family(exported):
    root, expected = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(root / "hf_home"), "TRANSFORMERS_VERBOSITY": "error",
        "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same thread count: same float reduction order, bit-equal outputs
    done = subprocess.run([sys.executable, "-c", CHILD, str(root)], cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
    for family, tensors in expected.items():
        with safe_open(root / f"{family}.out.safetensors", framework="pt") as f:
            got, classes = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        assert all(c.startswith("transformers_modules.") for c in classes.values()), (family, classes)  # the flat copies
        assert set(got) == set(tensors) and any(k.startswith("out.") for k in got), family
        for name, value in tensors.items():
            assert got[name].dtype == value.dtype and torch.equal(got[name], value), f"{family} {name}"


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
    assert "AutoImageProcessor" in json.loads((root / "vit" / "preprocessor_config.json").read_text())["auto_map"]
    for family in CASES:
        if family != "vit":
            processor_config = json.loads((root / family / "processor_config.json").read_text())
            assert processor_config["auto_map"]["AutoProcessor"].startswith("processing_"), family
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
    hf = transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                      intermediate_size=64, image_size=16, patch_size=4)).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert convert_cli(["transformers", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "out"), "--remote-code"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_vit.VlmhubViTModel"
    assert (tmp_path / "out" / "modeling_vit.py").exists()
    assert "trust_remote_code=True" in (tmp_path / "out" / "README.md").read_text()
