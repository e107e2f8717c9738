"""The Hub: transformers-format checkpoints through our classes, model cards, remote-code export.

- `VlmhubXxx.from_pretrained(folder_or_repo)` on a checkpoint in transformers' own format (model_type `clip`, `llava`,
  ...) lands in `from_transformers_format`: the weights are converted in memory with the key tables of
  `vlmhub-convert transformers` and handed to transformers' loader, so dtype, device_map, max_memory and offload
  behave as for any checkpoint. Our processor classes do the same through `processor_from_transformers_format`.
- `save_pretrained` / `push_to_hub` of every model write a model card (`write_model_card`) rendered from the config:
  family, sizes, visual tokens per image, and the provenance a conversion recorded (`record_provenance`), including
  the parity it measured (`parity_check`).
- `export_remote_code(folder)` writes flat copies of the package modules a saved model needs and sets `auto_map`, so
  the folder loads with `trust_remote_code=True` where vlmhub is not installed.

A family plugs in with data: a row in `vlmhub.FAMILIES` (classes), in `conversion.sources.transformers.BUILDERS`
(weights), in `TRANSFORMERS_PROCESSORS` (preprocessing), and optionally in `CHECK_INPUTS` / `VISUAL_TOKENS` below.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import torch

from .conversion.checkpoint import read_state_dict
from .conversion.engine import ConversionError, apply_table, expected_shapes

PROVENANCE_KEY = "vlmhub_provenance"  # config attribute holding what a conversion recorded
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


# ---------------------------------------------------------------------------------------------------------------------
# transformers-format checkpoints through our classes


def resolve_folder(name, **hub_kwargs) -> Path:
    """A local folder as is; a Hub id downloaded (config, safetensors weights and preprocessing files only)."""
    if Path(name).is_dir():
        return Path(name) / hub_kwargs.get("subfolder", "")
    from huggingface_hub import snapshot_download

    options = {k: hub_kwargs[k] for k in ("cache_dir", "force_download", "local_files_only", "token", "revision") if k in hub_kwargs}
    folder = Path(snapshot_download(str(name), allow_patterns=SNAPSHOT_PATTERNS, **options))
    return folder / hub_kwargs.get("subfolder", "")


def read_hf_config(folder: Path) -> dict:
    if not (folder / "config.json").exists():
        raise ConversionError(f"{folder} is not a saved model folder (no config.json)")
    return json.loads((folder / "config.json").read_text())


def _builder(model_type: str):
    from .conversion.sources.transformers import BUILDERS

    if model_type not in BUILDERS:
        raise ConversionError(f"transformers model_type {model_type!r} has no vlmhub conversion (supported: {sorted(BUILDERS)})")
    build = BUILDERS[model_type]
    if isinstance(build, str):
        build = importlib.import_module(f"vlmhub.conversion.sources.{build}").build
    return build


def convert_in_memory(folder: Path) -> tuple[torch.nn.Module, dict]:
    """(our model on the meta device, its converted state dict) for a transformers folder; no weights initialised.

    The checkpoint is memory-mapped, not read (`read_state_dict(lazy=True)`): renamed tensors stay views of the files,
    transforms allocate only their outputs, and transformers' loader takes the views as parameters (copy-on-write, so
    training them never touches the files) or casts them, as it does for its own checkpoints. Peak memory is about one
    checkpoint, or what device_map / max_memory keep in CPU memory."""
    hf = read_hf_config(folder)
    state_dict = read_state_dict(folder, lazy=True)
    with torch.device("meta"):
        model, table, _ = _builder(hf.get("model_type"))(hf, state_dict, folder)
    converted = apply_table(state_dict, table, expected_shapes(model))
    saved_dtype = hf.get("dtype") or hf.get("torch_dtype")
    if saved_dtype:  # so that dtype="auto" picks the checkpoint's dtype, as for transformers' own classes
        model.config.dtype = saved_dtype
    return model, converted


def from_transformers_format(cls, name, **kwargs):
    """`cls.from_pretrained` of a transformers-format folder or Hub id: convert in memory, then load through
    transformers' own loader (dtype, device_map, max_memory, offload_folder, attn_implementation all apply)."""
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    folder = resolve_folder(name, **hub_kwargs)
    built, state_dict = convert_in_memory(folder)
    config = built.config
    if not isinstance(config, cls.config_class):
        raise ValueError(f"{name} converts to {type(built).__name__} ({type(config).__name__}); "
                         f"{cls.__name__} takes a {cls.config_class.__name__}. Load it with {type(built).__name__}")
    record_provenance(config, "transformers", str(name))
    # With no name our override goes straight to transformers' loader, which builds on the meta device and fills in.
    return cls.from_pretrained(None, config=config, state_dict=state_dict, **kwargs)


def record_provenance(config, source: str, input_path: str, parity: dict | None = None) -> None:
    """Store where the weights came from (and the parity measured against the original) in the config."""
    from . import __version__

    entry = {"source": source, "input": input_path, "vlmhub_version": __version__}
    if parity:
        entry["parity"] = parity
    setattr(config, PROVENANCE_KEY, entry)


# ---------------------------------------------------------------------------------------------------------------------
# Processors of transformers-format folders


def _image_family(model_type: str):
    def make(hf: dict, folder: Path):
        from .processing.convert import processor_from_transformers

        return processor_from_transformers(folder, model_type)

    return make


def _llava(hf: dict, folder: Path):
    from .conversion.sources.transformers_llava import llava_config
    from .processing.llava import processor_from_transformers

    return processor_from_transformers(folder, llava_config(hf))


def _mllama(hf: dict, folder: Path):
    from .conversion.sources.transformers_mllama import processor_from_folder

    return processor_from_folder(folder)


def _blip(hf: dict, folder: Path):
    from .conversion.sources.transformers_blip import blip_processor

    return blip_processor(folder)


def _blip2(hf: dict, folder: Path):
    from .conversion.sources.transformers_blip import blip2_config
    from .processing.blip2 import processor_from_transformers

    return processor_from_transformers(folder, blip2_config(hf, False))


# transformers model_type -> make(hf config dict, folder) -> our processor or image processor (None: no preprocessing
# files). The same functions the `transformers` conversion source uses for its processors.
TRANSFORMERS_PROCESSORS = {
    "vit": _image_family("vit"),
    "clip": _image_family("clip"),
    "llava": _llava,
    "llava_next": _llava,
    "mllama": _mllama,
    "blip": _blip,
    "blip-2": _blip2,
}


def processor_from_transformers_format(cls, name, **kwargs):
    """`cls.from_pretrained` of a transformers-format folder or Hub id: our processor (or its image processor when
    `cls` is an image processor class), with keyword overrides applied to the image processor's settings."""
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    kwargs.pop("trust_remote_code", None)
    folder = resolve_folder(name, **hub_kwargs)
    model_type = read_hf_config(folder).get("model_type")
    if model_type not in TRANSFORMERS_PROCESSORS:
        raise ValueError(f"No vlmhub processor for transformers model_type {model_type!r} "
                         f"(supported: {sorted(TRANSFORMERS_PROCESSORS)})")
    processor = TRANSFORMERS_PROCESSORS[model_type](read_hf_config(folder), folder)
    if processor is None:
        raise ValueError(f"{name} holds no preprocessing files (preprocessor_config.json or processor_config.json)")
    if not isinstance(processor, cls):
        processor = getattr(processor, "image_processor", None)
        if not isinstance(processor, cls):
            raise TypeError(f"{name} (model_type {model_type!r}) gives no {cls.__name__}")
    image_processor = getattr(processor, "image_processor", processor)
    for key, value in kwargs.items():
        if not hasattr(image_processor, key):
            raise TypeError(f"{cls.__name__}.from_pretrained got an unknown setting {key!r}")
        setattr(image_processor, key, value)
    return processor


# ---------------------------------------------------------------------------------------------------------------------
# Parity self-check of a conversion


def _pixels(config, batch: int, generator) -> torch.Tensor:
    vision = _vision_config(config)
    return torch.randn(batch, vision.num_channels, vision.image_size, vision.image_size, generator=generator)


def _tokens(vocab: int, length: int, generator, avoid: int | None = None) -> torch.Tensor:
    ids = torch.randint(3, vocab, (length,), generator=generator)
    return ids if avoid is None else ids.masked_fill(ids == avoid, 3)


def _vit_inputs(model, generator) -> dict:
    return {"pixel_values": _pixels(model.config, 2, generator)}


def _clip_inputs(model, generator) -> dict:
    text = model.config.text_config
    length = min(8, text.max_position_embeddings)
    ids = torch.stack([_tokens(text.vocab_size, length, generator) for _ in range(2)])
    return {"pixel_values": _pixels(model.config, 2, generator), "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _merge_inputs(model, generator) -> dict:
    """One image and a prompt with exactly as many image tokens as the model produces for it (AnyRes too)."""
    config, inputs = model.config, {}
    side = config.vision_config.image_size
    if config.image_aspect_ratio == "anyres":
        size = (side, 2 * side)  # a wide image: several crops
        inputs["image_sizes"] = torch.tensor([size])
        inputs["pixel_values"] = torch.randn(1, model.num_crops(size), 3, side, side, generator=generator)
    else:
        inputs["pixel_values"] = _pixels(config, 1, generator)
    with torch.no_grad():
        count = len(model.get_image_features(**inputs).pooler_output[0])
    vocab, image = config.text_config.vocab_size, config.image_token_id
    ids = torch.cat([_tokens(vocab, 3, generator, image), torch.full((count,), image), _tokens(vocab, 4, generator, image)])
    return inputs | {"input_ids": ids[None], "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


# our model_type -> inputs(model, generator): a tiny random input both implementations accept.
CHECK_INPUTS = {
    "vlmhub_vit": _vit_inputs,
    "vlmhub_clip": _clip_inputs,
    "vlmhub_llava": _merge_inputs,
}


def compare_outputs(reference, ours) -> dict[str, float]:
    """Max abs difference of every tensor output the two share by name and shape."""
    diffs = {}
    for name, value in ours.items():
        other = reference.get(name) if hasattr(reference, "get") else None
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.shape == other.shape:
            diffs[name] = (value.float() - other.float()).abs().max().item()
    return diffs


def parity_check(model, source: str, input_path, seed: int = 0) -> dict | None:
    """Run the converted model and the original implementation on one tiny random input; None when the source has
    no reference implementation installed here (only `transformers` has) or the family no CHECK_INPUTS row."""
    make_inputs = CHECK_INPUTS.get(model.config.model_type)
    if source != "transformers" or make_inputs is None:
        return None
    import transformers

    folder = Path(input_path)
    arch = (read_hf_config(folder).get("architectures") or [None])[0]
    if not hasattr(transformers, str(arch)):
        return None
    reference = getattr(transformers, arch).from_pretrained(folder, dtype=torch.float32).eval()
    model = model.eval()
    inputs = make_inputs(model, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        diffs = compare_outputs(reference(**inputs), model(**inputs))
    if not diffs:
        raise ConversionError(f"The converted model and transformers' {arch} share no output to compare")
    return {
        "reference": f"transformers.{arch} {transformers.__version__}",
        "max_abs_diff": max(diffs.values()),
        "outputs": diffs,
        "inputs": {k: list(v.shape) for k, v in inputs.items()},
        "dtype": str(model.dtype).removeprefix("torch."),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Model cards

CARD_MARKER = "<!-- model card written by vlmhub.hub; edits are overwritten, delete this line to keep yours -->"
CARD_TEMPLATE = """---
{{ card_data }}
---
""" + CARD_MARKER + """

# {{ title }}

{{ summary }}

## Model

| | |
|---|---|
{% for key, value in facts %}| {{ key }} | {{ value }} |
{% endfor %}
## Provenance

{{ provenance }}

## Usage

```python
{{ usage }}
```
{% if remote_code %}
Without vlmhub installed, the flat code files in this repo load it: pass `trust_remote_code=True` to both calls (and
drop `import vlmhub`).
{% endif %}"""

PIPELINE_TAGS = {
    "AutoModelForImageTextToText": "image-text-to-text",
    "AutoModelForZeroShotImageClassification": "zero-shot-image-classification",
    "AutoModelForImageClassification": "image-classification",
}


def _vision_config(config):
    return config.vision_config if "vision_config" in config.sub_configs else config


def _tower_patches(config) -> int:
    vision = _vision_config(config)
    return (vision.image_size // vision.patch_size) ** 2


def _tower_tokens(config) -> str:
    vision = _vision_config(config)
    if not hasattr(vision, "image_size"):
        return "none (a text model)"
    patches = _tower_patches(config)
    return f"{patches + 1} ({patches} patches of {vision.patch_size} px at {vision.image_size} px, plus the class token)"


def _llava_tokens(config) -> str:
    tome = f", ToMe merges {config.visual_token_merge} tokens per view" if config.visual_token_merge else ""
    if config.image_aspect_ratio != "anyres":
        return f"{config.tokens_per_crop} (one {config.vision_config.image_size} px view{tome})"
    crop, pinpoints = config.vision_config.image_size, config.image_grid_pinpoints
    counts = [config.tokens_per_image(p) for p in pinpoints]  # pooling, ToMe merging and every merge type included
    return (f"{min(counts)} to {max(counts)} (AnyRes: a {crop} px base view plus the crops of the best of "
            f"{len(pinpoints)} canvases{tome})")


def _resampled_tokens(count, how: str):
    """config -> words, for a connector that gives the language model `count(config)` vectors made from the tower's."""
    def words(config) -> str:
        return f"{count(config)} ({how}, from the tower's {_tower_patches(config) + 1} tokens)"
    return words


# our model_type -> config -> visual tokens per image, in words. Default: the vision tower's tokens.
VISUAL_TOKENS = {
    "vlmhub_llava": _llava_tokens,
    "vlmhub_blip2": _resampled_tokens(lambda c: c.num_query_tokens, "the Q-Former's learned queries"),
    "vlmhub_minigpt4": _resampled_tokens(lambda c: c.num_image_tokens, "the connector's output, as soft prompt"),
    "vlmhub_mplug_owl": _resampled_tokens(lambda c: c.num_image_tokens, "the abstractor's learned queries and vit_eos"),
    "vlmhub_flamingo": lambda c: (f"{c.num_latents} (Perceiver latents from the tower's patch tokens, read by the gated "
                                  "cross-attention; the text keeps one <image> token)"),
    "vlmhub_mllama": lambda c: (f"{c.vision_config.num_positions} per tile, up to {c.vision_config.max_num_tiles} tiles "
                                f"({c.vision_config.num_positions - 1} patches of {c.vision_config.patch_size} px and the class "
                                f"token per {c.vision_config.image_size} px tile; read by the gated cross-attention, the text "
                                "keeps one <|image|> token)"),
}


def _weight_sizes(folder: Path) -> dict[str, int]:
    """Parameter count per top-level module, read from the saved safetensors headers."""
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    sizes: dict[str, int] = {}
    for name in files:
        if not (folder / name).exists():
            continue
        with safe_open(folder / name, framework="pt") as f:
            for key in f.keys():
                count = 1
                for dim in f.get_slice(key).get_shape():
                    count *= dim
                top = key.split(".")[0]
                sizes[top] = sizes.get(top, 0) + count
    return sizes


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _tower_facts(config) -> list[tuple[str, str]]:
    facts = []
    for key in ["", *config.sub_configs]:
        sub = getattr(config, key) if key else config
        if sub is None or not hasattr(sub, "hidden_size"):
            continue
        parts = [f"{sub.model_type}", f"{getattr(sub, 'num_hidden_layers', '?')} layers", f"width {sub.hidden_size}"]
        parts += [f"{sub.image_size} px, patch {sub.patch_size}"] if hasattr(sub, "image_size") else []
        if getattr(sub, "vocab_size", None) and getattr(sub, "use_text_input", True):  # a stage-2 Q-Former reads no text
            parts.append(f"vocabulary {sub.vocab_size}")
        facts.append((f"Config `{key or 'main'}`", ", ".join(parts)))
    return facts


def _provenance_text(config) -> str:
    entry = getattr(config, PROVENANCE_KEY, None)
    if not entry:
        return "Saved with vlmhub; not converted from another format."
    text = f"Converted from `{entry['input']}` (source format `{entry['source']}`) with vlmhub {entry['vlmhub_version']}."
    parity = entry.get("parity")
    if not parity:
        return text + " No reference implementation was run during conversion (see the oracle-fixture tests)."
    inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in parity["inputs"].items())
    outputs = ", ".join(f"{k} {v:.2e}" for k, v in parity["outputs"].items())
    return (f"{text}\n\nParity measured during conversion against {parity['reference']} on one random input "
            f"({inputs}), {parity['dtype']}: **max abs diff {parity['max_abs_diff']:.2e}** ({outputs}).")


def _family_row(model_type: str):
    from . import FAMILIES

    return next((row for row in FAMILIES if row[0].model_type == model_type), None)


def _usage(config, repo: str) -> tuple[str, str]:
    row = _family_row(config.model_type)
    auto = next(iter(row[2]), None).__name__ if row and row[2] else "AutoModel"
    preprocess = "AutoProcessor" if row and row[4] else "AutoImageProcessor"
    code = (f"import vlmhub  # registers the vlmhub_* model types with transformers\n"
            f"from transformers import {auto}, {preprocess}\n\n"
            f'model = {auto}.from_pretrained("{repo}")\n'
            f'processor = {preprocess}.from_pretrained("{repo}")')
    return code, auto


def model_card(config, folder: Path, repo_id: str | None = None):
    """huggingface_hub ModelCard for the model saved in `folder` (config + weights)."""
    from huggingface_hub import ModelCard, ModelCardData

    family = config.model_type.removeprefix("vlmhub_")
    repo = repo_id or (folder.name if not folder.name.startswith(".") else "path/to/this/folder")
    usage, auto = _usage(config, repo)
    sizes = _weight_sizes(folder)
    total = sum(sizes.values())
    tokens = VISUAL_TOKENS.get(config.model_type, _tower_tokens)(config)
    facts = [("Family", f"{family} (`{config.model_type}`)"), ("Architecture", ", ".join(config.architectures or [])),
             ("Parameters", f"{_human(total)} (" + ", ".join(f"{k} {_human(v)}" for k, v in sizes.items()) + ")"),
             *_tower_facts(config), ("Visual tokens per image", tokens)]
    entry = getattr(config, PROVENANCE_KEY, None) or {}
    source = entry.get("input", "")
    base = source if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not Path(source).exists() else None  # a Hub id
    data = ModelCardData(library_name="transformers", tags=["vlmhub", family], base_model=base,
                         pipeline_tag=PIPELINE_TAGS.get(auto, "image-feature-extraction"))
    return ModelCard.from_template(
        data, template_str=CARD_TEMPLATE, title=f"{repo.split('/')[-1]} ({family}, vlmhub)",
        summary=f"A {family} model in vlmhub's format: it loads with transformers after `import vlmhub`.",
        facts=facts, provenance=_provenance_text(config), usage=usage, remote_code=bool(getattr(config, "auto_map", None)),
    )


def write_model_card(model_or_config, directory, repo_id: str | None = None) -> Path | None:
    """Render the card of the model saved in `directory` into README.md (never over a README someone wrote);
    returns its path, or None when a hand-written README was kept."""
    config = getattr(model_or_config, "config", model_or_config)
    path = Path(directory) / "README.md"
    if path.exists() and CARD_MARKER not in path.read_text():
        return None
    model_card(config, Path(directory), repo_id).save(path)
    return path


def push_to_hub(model, repo_id: str, *, max_shard_size="50GB", private=None, token=None, revision=None,
                commit_message: str | None = None, create_pr: bool = False, **save_kwargs):
    """Save (weights, config, our card) to a temporary folder and upload it, card included."""
    import tempfile

    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size, **save_kwargs)
        write_model_card(model, tmp, repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload {type(model).__name__}")


# ---------------------------------------------------------------------------------------------------------------------
# Remote-code export: flat copies of our own modules

EXPORTED_PACKAGES = ("configuration", "modeling", "processing", "geometry")  # conversion, train and hub stay out


def flat_name(module: str) -> str:
    """vlmhub.modeling.blocks.vit -> modeling_blocks_vit (a file name transformers' loader accepts)."""
    return module.removeprefix("vlmhub.").replace(".", "_")


def _exportable(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "vlmhub" and len(parts) > 1 and parts[1] in EXPORTED_PACKAGES


def _relative_imports(tree: ast.Module, package: str):
    """(node, absolute module, inside a function) for every relative import of a module's syntax tree."""
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                if child.module is None:
                    raise ValueError(f"`from {'.' * child.level} import ...` in {package} cannot be exported: "
                                     "import from the module (`from .x import y`)")
                found.append((child, importlib.util.resolve_name("." * child.level + child.module, package), in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return found


def _origin(module: str, name: str) -> tuple[str, str]:
    """Where `from module import name` really comes from: a package __init__'s re-export is followed to the module
    that defines the name, so a flat copy carries only the modules actually used."""
    spec = importlib.util.find_spec(module)
    if spec.submodule_search_locations is None:
        return module, name
    for node, target, in_function in _relative_imports(ast.parse(Path(spec.origin).read_text()), module):
        for alias in node.names:
            if not in_function and (alias.asname or alias.name) == name and _exportable(target):
                return _origin(target, alias.name)
    return module, name


def _rewrite_import(node: ast.ImportFrom, target: str) -> tuple[list[str], list[str]]:
    """Flat `from .x import y` lines for one relative import of an exported module, and the modules they need."""
    by_module: dict[str, list[str]] = {}
    for alias in node.names:
        module, name = _origin(target, alias.name)
        bound = alias.asname or alias.name
        by_module.setdefault(module, []).append(name if name == bound else f"{name} as {bound}")
    indent = " " * node.col_offset
    lines = [f"{indent}from .{flat_name(m)} import {', '.join(names)}\n" for m, names in by_module.items()]
    return lines, list(by_module)


def flatten_module(module: str) -> tuple[str, list[str]]:
    """The source of `module` with relative imports pointing at flat siblings, and the modules it needs.

    Imports of modules that are not exported (conversion, hub) may only sit inside functions: they become
    `raise ImportError(...)`, so those code paths say they need the vlmhub package."""
    spec = importlib.util.find_spec(module)
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    source = Path(spec.origin).read_text()
    lines, needs = source.splitlines(keepends=True), []
    for node, target, in_function in sorted(_relative_imports(ast.parse(source), package), key=lambda x: -x[0].lineno):
        if _exportable(target):
            new, modules = _rewrite_import(node, target)
            needs += modules
        elif in_function:
            message = f"{target} belongs to the vlmhub package, not to this remote-code copy"
            new = [" " * node.col_offset + f'raise ImportError("{message}")\n']
        else:
            raise ValueError(f"{module} imports {target} at module level; remote code can only carry {EXPORTED_PACKAGES}")
        lines[node.lineno - 1 : node.end_lineno] = new
    from . import __version__

    header = f"# Generated from {module} (vlmhub {__version__}) by vlmhub.hub.export_remote_code. Edit vlmhub, not this copy.\n"
    return header + "".join(lines), needs


def collect_modules(roots: list[str]) -> dict[str, str]:
    """{flat file name: source} for `roots` and every exported module they import, transitively."""
    files, todo, seen = {}, list(roots), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        files[flat_name(module) + ".py"], needs = flatten_module(module)
        todo.extend(needs)
    return files


def _ref(cls) -> str:
    return f"{flat_name(cls.__module__)}.{cls.__name__}"


def _update_json(path: Path, update) -> None:
    if path.exists():
        data = json.loads(path.read_text())
        update(data)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_remote_code(model_dir, repo_id: str | None = None) -> list[str]:
    """Write the flat code files a saved vlmhub model needs and point `auto_map` at them (config.json and the
    processor files), so `AutoModel*.from_pretrained(dir, trust_remote_code=True)` and `AutoProcessor...` work where
    vlmhub is not installed. Returns the file names written. `repo_id` names the repo in the re-rendered card."""
    folder = Path(model_dir)
    model_type = read_hf_config(folder).get("model_type")
    row = _family_row(model_type)
    if row is None:
        raise ValueError(f"{folder} holds model_type {model_type!r}, not a registered vlmhub family")
    config_cls, model_cls, tasks, image_processor, processor = row
    classes = [config_cls, model_cls, *tasks.values(), image_processor, processor]
    files = collect_modules(sorted({cls.__module__ for cls in classes if cls is not None}))
    auto_map = {"AutoConfig": _ref(config_cls), "AutoModel": _ref(model_cls)}
    auto_map |= {auto.__name__: _ref(cls) for auto, cls in tasks.items()}
    if image_processor is not None:  # the conventional image_processing_*.py name, re-exporting the flat copy
        shim = f"image_processing_{image_processor.__module__.rsplit('.', 1)[-1]}"
        name, module = image_processor.__name__, flat_name(image_processor.__module__)
        files[shim + ".py"] = f'"""{name}, generated by vlmhub."""\n\nfrom .{module} import {name}  # noqa: F401\n'
        auto_map["AutoImageProcessor"] = f"{shim}.{image_processor.__name__}"
    if processor is not None:
        auto_map["AutoProcessor"] = _ref(processor)
    for name, text in files.items():
        (folder / name).write_text(text)
    _set_auto_maps(folder, auto_map)
    if (folder / "README.md").exists():  # re-render the card: it now tells how to load without vlmhub
        from transformers import AutoConfig

        write_model_card(AutoConfig.from_pretrained(folder), folder, repo_id)
    return sorted(files)


def _set_auto_maps(folder: Path, auto_map: dict) -> None:
    preprocess = {k: v for k, v in auto_map.items() if k in ("AutoImageProcessor", "AutoProcessor")}
    image_only = {k: v for k, v in preprocess.items() if k == "AutoImageProcessor"}

    def processor_config(data):
        data["auto_map"] = preprocess
        if isinstance(data.get("image_processor"), dict):
            data["image_processor"]["auto_map"] = image_only

    _update_json(folder / "config.json", lambda data: data.__setitem__("auto_map", auto_map))
    _update_json(folder / "processor_config.json", processor_config)
    _update_json(folder / "preprocessor_config.json", lambda data: data.__setitem__("auto_map", image_only))
