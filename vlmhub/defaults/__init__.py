"""Small models trained on the synthetic scenes, shipped with the package so the demo and quickstart work offline.

    model, processor = vlmhub.load_default("llava")

Each folder here is an ordinary saved model (config, safetensors, processor, model card, evaluation.json) made by a
recipe in vlmhub/train/recipes.py.
"""

from pathlib import Path

HERE = Path(__file__).parent


def available() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if (p / "config.json").exists())


def path(name: str) -> Path:
    folder = HERE / name
    if not (folder / "config.json").exists():
        raise ValueError(f"No embedded default model {name!r}; available: {available()}")
    return folder


def load_default(name: str = "llava"):
    """(model, processor) of an embedded default model, in eval mode; no network."""
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    import vlmhub  # noqa: F401  (registers the Auto classes)

    folder = path(name)
    try:
        model = AutoModelForImageTextToText.from_pretrained(folder)
    except ValueError:  # not a generative model (CLIP)
        model = AutoModel.from_pretrained(folder)
    return model.eval(), AutoProcessor.from_pretrained(folder)
