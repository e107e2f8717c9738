"""The demo's logic, free of any UI: a thread-safe model cache, turning Gradio's chat history into a chat-template
prompt, checked image loading, streamed generation that can be stopped, zero-shot classification and the info
panel. app.py only lays these out; everything here is testable without a browser or a server."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ERROR_MARK = "⚠️"  # starts every message we show instead of an answer; such turns stay out of later prompts
MAX_MEGAPIXELS = 25.0  # larger uploads are refused before decoding (a 50 MP RGB image is 150 MB decoded)
DEFAULT_IMAGES_PER_MESSAGE = 4
# Images one user message may carry, by family (model_type without "vlmhub_"); the rest take the default.
IMAGE_LIMITS = {"mllama": 1, "blip2": 1, "minigpt4": 1}
STREAM_TIMEOUT_S = 120.0  # the longest wait for one token before the turn is given up


class DemoError(Exception):
    """A problem the user can act on; its text is shown in the chat as is."""


# ---------------------------------------------------------------- models

@dataclass
class Loaded:
    name: str
    model: torch.nn.Module
    processor: object
    load_seconds: float

    @property
    def family(self) -> str:
        return self.model.config.model_type.removeprefix("vlmhub_")

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_default(name: str):
    """vlmhub's embedded default model `name` -> (model, processor), imported only when asked for."""
    import vlmhub

    if not hasattr(vlmhub, "load_default"):
        raise DemoError(f"The embedded default model {name!r} is not available: this vlmhub has no load_default(). "
                        "Type a local folder or a Hub id in the model box instead.")
    return vlmhub.load_default(name)


def load_pretrained(source: str, auto_model: str = "AutoModelForImageTextToText"):
    """A local folder or Hub id -> (model, processor), through the transformers Auto classes (vlmhub registered)."""
    import transformers

    import vlmhub  # noqa: F401  (registers our families with the Auto classes)

    source = source.strip()
    looks_local = source.startswith(("/", ".", "~")) or Path(source).expanduser().exists()
    if looks_local and not Path(source).expanduser().is_dir():
        raise DemoError(f"No model folder at {source!r}.")
    path = str(Path(source).expanduser()) if looks_local else source
    try:
        model = getattr(transformers, auto_model).from_pretrained(path)
        processor = transformers.AutoProcessor.from_pretrained(path)
    except Exception as err:  # any failure (missing files, unknown model type, network) is the user's to see
        raise DemoError(f"Could not load {source!r}: {type(err).__name__}: {err}") from err
    return model, processor


class ModelCache:
    """Models loaded once and shared by every session. `loaders` maps the selector's names to zero-argument
    loaders returning (model, processor); any other name is loaded as a folder or Hub id with `fallback`."""

    def __init__(self, loaders: dict[str, Callable[[], tuple]], fallback: Callable[[str], tuple] = load_pretrained):
        self.loaders, self.fallback = dict(loaders), fallback
        self._models: dict[str, Loaded] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def names(self) -> list[str]:
        return list(self.loaders)

    def get(self, name: str) -> Loaded:
        name = (name or "").strip()
        if not name:
            raise DemoError("Choose a model first.")
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one load per name; later callers wait for it and share the result
            if name not in self._models:
                start = time.perf_counter()
                model, processor = self.loaders[name]() if name in self.loaders else self.fallback(name)
                self._models[name] = Loaded(name, model.eval(), processor, time.perf_counter() - start)
            return self._models[name]


# ---------------------------------------------------------------- images

def open_image(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS) -> Image.Image:
    """An uploaded file as an RGB image, or a DemoError saying what is wrong with it."""
    name = Path(path).name
    try:
        image = Image.open(path)  # lazy: reads the header only, so the size check below costs nothing
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DemoError(f"{ERROR_MARK} {name!r} is not an image I can read (another kind of file?): {err}") from err
    megapixels = image.width * image.height / 1e6
    if megapixels > max_megapixels:
        raise DemoError(f"{ERROR_MARK} {name!r} is {image.width}x{image.height} = {megapixels:.1f} megapixels; "
                        f"this demo takes images up to {max_megapixels:g} megapixels. Please downscale it.")
    try:
        image.load()  # decode now: a truncated or corrupt file fails here
        return ImageOps.exif_transpose(image).convert("RGB")
    except Exception as err:  # Pillow raises OSError, SyntaxError, struct.error... on bad data
        raise DemoError(f"{ERROR_MARK} {name!r} looks like an image but is corrupt or truncated: {err}") from err


def image_limit(family: str) -> int:
    return IMAGE_LIMITS.get(family, DEFAULT_IMAGES_PER_MESSAGE)


def check_image_limit(family: str, messages: list[dict]) -> None:
    limit = image_limit(family)
    for i, m in enumerate(messages):
        n = sum(part["type"] == "image" for part in m["content"])
        if m["role"] == "user" and n > limit:
            raise DemoError(f"{ERROR_MARK} {family} takes at most {limit} image{'s' * (limit > 1)} per message; "
                            f"message {i // 2 + 1} has {n}. Send the images in separate messages.")


# ---------------------------------------------------------------- history -> prompt

def _parts(content) -> list[tuple[str, str]]:
    """Gradio message content (a string, a file dict, a component value or a list of them) -> [(kind, value)]."""
    if isinstance(content, (list, tuple)):
        return [p for item in content for p in _parts(item)]
    if isinstance(content, str):
        return [("text", content)] if content.strip() else []
    if isinstance(content, dict):
        if content.get("type") == "text":
            return _parts(content.get("text", ""))
        file = content.get("file", content)
        path = file.get("path") if isinstance(file, dict) else None
        return [("file", path)] if path else []
    path = getattr(content, "path", None) or getattr(getattr(content, "value", None), "path", None)
    return [("file", path)] if path else []


def conversation(history: list[dict], message: dict | str) -> list[tuple[str, list[tuple[str, str]]]]:
    """Gradio's messages-format history plus the new message -> [(role, parts)], consecutive messages of a role
    merged, and every exchange whose answer was an error note dropped (with the user turn that caused it)."""
    turns: list[tuple[str, list]] = []
    if isinstance(message, str):
        message = {"text": message, "files": []}
    new = [("file", f if isinstance(f, str) else f.get("path")) for f in message.get("files") or []]
    new += _parts(message.get("text") or "")
    for role, parts in [(m["role"], _parts(m["content"])) for m in history] + [("user", new)]:
        if role not in ("user", "assistant"):
            continue
        if role == "assistant" and any(v.startswith(ERROR_MARK) for k, v in parts if k == "text"):
            if turns and turns[-1][0] == "user":
                turns.pop()
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, list(parts)))
    return turns


def template_messages(turns) -> tuple[list[dict], list[str]]:
    """[(role, parts)] -> chat-template messages ({"type": "image"} / {"type": "text"} parts) and the image paths in
    prompt order. Within a user message images come first, as LLaVA's "<image>\\n question" was trained."""
    messages, paths = [], []
    for role, parts in turns:
        files = [v for k, v in parts if k == "file"]
        text = "\n".join(v for k, v in parts if k == "text")
        content = [{"type": "image"} for _ in files] + ([{"type": "text", "text": text}] if text else [])
        paths += files
        messages.append({"role": role, "content": content})
    return messages, paths


def build_prompt(processor, messages: list[dict]) -> str:
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    token = getattr(processor, "image_token", "<image>")  # a processor without a chat template: a plain transcript
    lines = [f"{m['role'].capitalize()}: " + "".join(token + "\n" if c["type"] == "image" else c["text"] for c in m["content"])
             for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def prepare(loaded: Loaded, history: list[dict], message) -> tuple[dict, list[Image.Image]]:
    """The model inputs for the next answer and the conversation's images (the last one is the current image)."""
    turns = conversation(history, message)
    if not turns or turns[-1][0] != "user" or not turns[-1][1]:
        raise DemoError(f"{ERROR_MARK} Type a question, or upload an image and ask about it.")
    messages, paths = template_messages(turns)
    check_image_limit(loaded.family, messages)
    images = [open_image(p) for p in paths]
    prompt = build_prompt(loaded.processor, messages)
    try:
        inputs = loaded.processor(images=images or None, text=prompt, return_tensors="pt")
    except ValueError as err:
        raise DemoError(f"{ERROR_MARK} The processor refused this conversation: {err}") from err
    return inputs, images


# ---------------------------------------------------------------- generation

class _StopOnEvent:
    """A StoppingCriteria-compatible callable: generation ends once `event` is set (Stop, or the client left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass
class Settings:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0


def generation_kwargs(settings: Settings) -> dict:
    if settings.temperature <= 0:
        return {"max_new_tokens": int(settings.max_new_tokens), "do_sample": False}
    return {"max_new_tokens": int(settings.max_new_tokens), "do_sample": True, "temperature": float(settings.temperature),
            "top_p": float(settings.top_p), "top_k": 0}


def stream_answer(loaded: Loaded, inputs: dict, settings: Settings, stop: threading.Event | None = None) -> Iterator[str]:
    """Yield the answer so far after every new token; generation runs in a thread and stops when `stop` is set,
    or when this generator is closed (Gradio closes it on Stop or when the client disconnects)."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    stop = stop or threading.Event()
    streamer = TextIteratorStreamer(loaded.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                    timeout=STREAM_TIMEOUT_S)
    kwargs = dict(inputs, streamer=streamer, stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                  **generation_kwargs(settings))
    failure: list[BaseException] = []

    def run():
        try:
            with torch.inference_mode():
                loaded.model.generate(**kwargs)
        except BaseException as err:  # reported to the reader below; the streamer must still end
            failure.append(err)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True, name="vlmhub-generate")
    thread.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield text
    finally:
        stop.set()
        thread.join(timeout=STREAM_TIMEOUT_S)
    if failure:
        raise DemoError(f"{ERROR_MARK} Generation failed: {type(failure[0]).__name__}: {failure[0]}") from failure[0]


def visual_tokens(loaded: Loaded, image: Image.Image | None, inputs: dict | None = None) -> int | None:
    """How many visual tokens the language model sees for `image`: what the gated cross-attention reads (Flamingo,
    Mllama), else the processor's own count where it has one, else the query tokens of a Q-Former family, else the
    image tokens in the prompt of a one-image input."""
    from vlmhub.tasks import cross_attention_tokens

    if image is None:
        return None
    p = loaded.processor
    read = cross_attention_tokens(loaded.model.config, inputs) if inputs is not None else None
    if read is not None:
        return read
    count = getattr(p, "num_image_tokens", None)
    if callable(count):
        return int(count((image.height, image.width)))
    if isinstance(count, int):
        return count
    if isinstance(getattr(p, "num_query_tokens", None), int):
        return p.num_query_tokens
    token_id = getattr(p, "image_token_id", None)
    if inputs is not None and isinstance(token_id, int):
        return int((inputs["input_ids"][0] == token_id).sum())
    return None


def info_markdown(loaded: Loaded | None, tokens: int | None = None, note: str = "", chat: bool = True) -> str:
    """The info panel: family, parameters, load time (and for chat models the image limit and the visual tokens
    of the current image), plus an optional note."""
    if loaded is None:
        return note or "No model loaded yet."
    rows = [("model", f"`{loaded.name}`"), ("family", loaded.family), ("parameters", f"{loaded.parameters:,}"),
            ("load time", f"{loaded.load_seconds:.2f} s")]
    if chat:
        rows.append(("images per message", str(image_limit(loaded.family))))
    if tokens is not None:
        rows.append(("visual tokens (current image)", str(tokens)))
    table = "| model info | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return table + (f"\n\n{note}" if note else "")


def answer(cache: ModelCache, name: str, history: list[dict], message, settings: Settings) -> Iterator[tuple[str, str]]:
    """One chat turn: yields (answer so far, info panel). Every user-facing problem is yielded as a message
    starting with ERROR_MARK instead of raising, so the chat shows it and the app keeps serving."""
    loaded = None
    try:
        loaded = cache.get(name)
        inputs, images = prepare(loaded, history, message)
        info = info_markdown(loaded, visual_tokens(loaded, images[-1] if images else None, inputs))
        yield "", info
        text = ""
        for text in stream_answer(loaded, inputs, settings):
            yield text, info
        if not text.strip():
            yield f"{ERROR_MARK} The model produced no text (it ended at once).", info
    except Exception as err:  # DemoError: the user's to fix; anything else: shown too, the app keeps serving
        text = str(err) if isinstance(err, DemoError) else f"Unexpected error: {type(err).__name__}: {err}"
        text = text if text.startswith(ERROR_MARK) else f"{ERROR_MARK} {text}"
        yield text, info_markdown(loaded, note=text)


# ---------------------------------------------------------------- CLIP tab

def parse_labels(text: str) -> list[str]:
    labels = list(dict.fromkeys(x.strip() for x in (text or "").replace("\n", ",").split(",") if x.strip()))
    if not labels:
        raise DemoError("Give at least one label (comma-separated).")
    return labels


def classify(cache: ModelCache, name: str, image_path: str | None, labels_text: str,
             template: str = "a photo of a {}.") -> dict[str, float]:
    """Zero-shot probabilities {label: p} of one image over the labels (they sum to 1)."""
    import vlmhub

    if not image_path:
        raise DemoError("Upload an image first.")
    labels = parse_labels(labels_text)
    if "{}" not in template:
        raise DemoError(f"The template must contain {{}} where the label goes; got {template!r}.")
    loaded = cache.get(name)
    image = open_image(image_path)
    probs = vlmhub.zero_shot_classify(loaded.model, loaded.processor, image, labels, template=template)[0]
    return {label: float(p) for label, p in zip(labels, probs)}


# ---------------------------------------------------------------- examples

def scene_examples(folder: str | Path, count: int = 4, size: int = 48, seed: int = 2) -> list[tuple[str, str, str]]:
    """Draw `count` synthetic scenes into `folder`: [(image path, question, expected answer)]. The default seed draws
    examples the shipped LLaVA answers right (73% of held-out questions are; seed 0 has a four-shape scene it counts as
    three)."""
    from vlmhub.data import scenes

    folder, rng, out = Path(folder), random.Random(seed), []
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shapes = scenes.sample_scene(rng)
        path = folder / f"scene_{seed}_{i}.png"
        scenes.draw(shapes, size).save(path)
        qa = scenes.questions(shapes, rng)
        question, expected = qa[(2, 0, 1)[i % 3]]  # exists, colour and count questions in turn
        out.append((str(path), question, expected))
    return out
