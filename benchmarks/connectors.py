"""The connector design guide, measured: the embedded default models and their visual-token compression variants.

    python benchmarks/connectors.py [--images 100] [--readme README.md]

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
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vlmhub import defaults
from vlmhub.data import scenes
from vlmhub.train.recipes import IMAGE_SIZE, QUESTION_TYPES, evaluate

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

    model = AutoModelForImageTextToText.from_pretrained(folder, **changes).eval()
    processor = AutoProcessor.from_pretrained(folder, **changes) if changes else AutoProcessor.from_pretrained(folder)
    return model, processor


def visual_tokens(processor, image) -> int:
    prompt = chat(processor, "How many shapes are there?")
    ids = processor(images=[image], text=prompt, return_tensors="pt")["input_ids"][0]
    return int((ids == processor.image_token_id).sum())


def chat(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@torch.inference_mode()
def speed(model, processor, image, repeats: int = 20, new_tokens: int = 16) -> tuple[float, float]:
    """(median prefill seconds, decode tokens/s) for one image and one question, batch 1."""
    inputs = processor(images=[image], text=chat(processor, "What colour is the circle?"), return_tensors="pt")
    prefill = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(**inputs)
        prefill.append(time.perf_counter() - start)
    decode = []
    for _ in range(5):  # decode time: a long generation minus a one-token one (the prefill)
        runs = []
        for length in (1, new_tokens + 1):
            start = time.perf_counter()
            model.generate(**inputs, max_new_tokens=length, min_new_tokens=length, do_sample=False)
            runs.append(time.perf_counter() - start)
        decode.append(runs[1] - runs[0])
    decode = statistics.median(decode)
    return statistics.median(prefill), new_tokens / decode


def measure(images: int) -> list[dict]:
    from transformers import AutoConfig

    import vlmhub  # noqa: F401  (registers the Auto classes)

    work = Path(tempfile.mkdtemp(prefix="vlmhub-connectors-"))
    scenes.generate(work, train=0, test=images, size=IMAGE_SIZE, seed=HELDOUT_SEED)
    image = scenes.draw(scenes.sample_scene(random.Random(0)), IMAGE_SIZE)
    rows = []
    for name in defaults.available():
        config = AutoConfig.from_pretrained(defaults.path(name))
        if config.model_type not in CONNECTORS:
            continue
        for variant, changes in variants(config.model_type, config).items():
            model, processor = with_changes(defaults.path(name), changes)
            prefill, decode = speed(model, processor, image)
            accuracy = evaluate(model, processor, work)
            rows.append({"model": name, "connector": CONNECTORS[config.model_type], "compression": variant,
                         "visual_tokens": visual_tokens(processor, image),
                         "parameters": sum(p.numel() for p in model.parameters()), "prefill_ms": prefill * 1e3,
                         "decode_tokens_per_s": decode, **accuracy})
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
    p.add_argument("--images", type=int, default=100, help="held-out scenes to evaluate on")
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
