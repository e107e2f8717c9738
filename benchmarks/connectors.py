"""The connector design guide, measured: the embedded default models and their visual-token compression variants.

    python benchmarks/connectors.py [--images 300] [--readme README.md]

For every shipped generative default (vlmhub/defaults/) and each compression variant that applies to it (LLaVA: 2x2
spatial pooling, ToMe merging of half the tokens, both switched on in the config of the trained model, without
retraining): visual tokens per image, parameters, prefill latency, greedy decode tokens/s, and exact-match accuracy
by question type on a fresh held-out scenes split (a seed no recipe trains on). Writes the Markdown table between
the `connectors-table` markers of the README.
"""

import argparse
import json
import random
import re
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import timings  # noqa: E402

from vlmhub import defaults  # noqa: E402
from vlmhub.data import scenes  # noqa: E402
from vlmhub.tasks import cross_attention_tokens  # noqa: E402
from vlmhub.train.recipes import IMAGE_SIZE, QUESTION_TYPES, evaluate, prompt  # noqa: E402

HELDOUT_SEED = 4242  # no recipe trains or evaluates on it
MARKERS = ("<!-- connectors-table:start -->", "<!-- connectors-table:end -->")
CONNECTORS = {"vlmhub_llava": "MLP projector", "vlmhub_blip2": "Q-Former", "vlmhub_flamingo": "Perceiver + gated xattn",
              "vlmhub_mllama": "tiles + gated xattn"}


def variants(model_type: str, config) -> dict[str, dict]:
    """name -> config changes; only the ones this family and its patch grid allow."""
    out = {"none": {}}
    if model_type == "vlmhub_llava":
        side = config.vision_config.image_size // config.vision_config.patch_size
        if side % 2 == 0:
            out["2x2 pooling"] = {"spatial_pool_stride": 2}
        out["ToMe 50%"] = {"visual_token_merge": side * side // 2}
    return out


def with_changes(folder: Path, changes: dict):
    """The default model and processor with `changes` applied to its config (and so to the processor's token count)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder, **changes).eval(), AutoProcessor.from_pretrained(folder, **changes)


def visual_tokens(model, processor, image) -> int:
    """Vectors one image becomes for the language model: its image tokens in the prompt (soft-prompt families), or what
    the gated cross-attention reads (Flamingo, Mllama)."""
    inputs = processor(images=[image], text=prompt(processor, "How many shapes are there?"), return_tensors="pt")
    read = cross_attention_tokens(model.config, inputs)
    return read if read is not None else int((inputs["input_ids"][0] == processor.image_token_id).sum())


def speeds(loaded: dict, image, repeats: int = 20, new_tokens: int = 16) -> dict:
    """key -> (median prefill seconds, decode tokens/s) for one image and one question, batch 1, through the
    compression benchmark's interleaved timings."""
    models = {key: model for key, (model, _) in loaded.items()}
    inputs = {key: dict(processor(images=[image], text=prompt(processor, "What colour is the circle?"), return_tensors="pt"))
              for key, (_, processor) in loaded.items()}
    timed = timings(models, inputs, repeats, new_tokens)
    return {key: (t["prefill"], t["decode_tps"]) for key, t in timed.items()}


def measure(images: int) -> list[dict]:
    from transformers import AutoConfig

    import vlmhub  # noqa: F401  (registers the Auto classes)

    work = Path(tempfile.mkdtemp(prefix="vlmhub-connectors-"))
    scenes.generate(work, train=0, test=images, size=IMAGE_SIZE, seed=HELDOUT_SEED)
    image = scenes.draw(scenes.sample_scene(random.Random(0)), IMAGE_SIZE)
    loaded, connector = {}, {}
    for name in defaults.available():
        config = AutoConfig.from_pretrained(defaults.path(name))
        if config.model_type in CONNECTORS:
            for variant, changes in variants(config.model_type, config).items():
                loaded[name, variant] = with_changes(defaults.path(name), changes)
                connector[name, variant] = CONNECTORS[config.model_type]
    timed, rows = speeds(loaded, image), []
    for (name, variant), (model, processor) in loaded.items():
        prefill, decode = timed[name, variant]
        rows.append({"model": name, "connector": connector[name, variant], "compression": variant,
                     "visual_tokens": visual_tokens(model, processor, image),
                     "parameters": sum(p.numel() for p in model.parameters()), "prefill_ms": prefill * 1e3,
                     "decode_tokens_per_s": decode, **evaluate(model, processor, work)})
        print(json.dumps(rows[-1]))
    return rows


def table(rows: list[dict], images: int) -> str:
    kinds = [name for name, _ in QUESTION_TYPES]
    head = ["default", "connector", "compression", "visual tokens", "parameters", "prefill ms", "decode tok/s",
            "accuracy", *kinds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["connector"], r["compression"], str(r["visual_tokens"]), f"{r['parameters'] / 1e6:.2f} M",
                 f"{r['prefill_ms']:.1f}", f"{r['decode_tokens_per_s']:.0f}", f"{100 * r['accuracy']:.1f}%"]
        cells += [f"{100 * r['by_type'][k]:.1f}%" if k in r["by_type"] else "n/a" for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nExact match on {images} held-out scenes (seed {HELDOUT_SEED}), greedy; CPU, batch 1, "
            f"{torch.get_num_threads()} thread(s), torch {torch.__version__}. Compression variants switch the option on "
            "in the trained model's config without retraining. Made by `python benchmarks/connectors.py`.")
    return "\n".join(lines) + "\n" + note


def write_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    start, end = MARKERS
    if start not in content or end not in content:
        raise ValueError(f"{readme} has no {start} ... {end} markers to write the table between")
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    readme.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="held-out scenes to evaluate on (300: about 1200 questions)")
    p.add_argument("--readme", type=Path, help="write the table into this README (between the markers)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = measure(a.images)
    text = table(rows, a.images)
    print(text)
    if a.readme:
        write_readme(a.readme, text)


if __name__ == "__main__":
    main()
