"""Training data in LLaVA's conversation JSON, turned into model inputs with labels on the assistant turns only.

A record: {"id": ..., "image": "a.png" | ["a.png", "b.png"] | absent, "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}. Image paths are relative to an image folder.
`<image>` is the data format's placeholder whatever the family's own image token.

How each family is driven (all through its processor's chat template, `render_with_spans`):
- soft prompt (LLaVA, BLIP-2, MiniGPT-4, mPLUG-Owl): the processor expands each image placeholder into its image
  tokens (`expand_image_tokens`); image tensors are concatenated over the batch;
- cross-attention (Mllama, Flamingo): one image token per image stays in the text; image tensors are per sample
  (batch, images, ...), padded with absent images to the batch's most; Mllama's cross_attention_mask comes from
  `vlmhub.processing.mllama.cross_attention_mask` on the final ids, Flamingo derives its media locations from the ids.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..processing.flamingo import VlmhubFlamingoProcessor
from ..processing.mllama import VlmhubMllamaProcessor, cross_attention_mask

IGNORE_INDEX = -100
DATA_IMAGE_TOKEN = "<image>"  # the placeholder of LLaVA's conversation format
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def load_records(path: str | Path) -> list[dict]:
    """The records of a LLaVA-format JSON (a list) or JSON-lines file, checked for the fields we use."""
    text = Path(path).read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    for i, record in enumerate(records):
        turns = record.get("conversations")
        if not turns or any(t.get("from") not in ROLES or "value" not in t for t in turns):
            raise ValueError(f"{path}: record {i} ({record.get('id', '?')}) needs 'conversations' of {{'from', 'value'}} turns")
    return records


def to_messages(record: dict, image_token: str = DATA_IMAGE_TOKEN) -> list[dict]:
    """LLaVA turns -> chat-template messages; `<image>` inside a turn becomes an image content part."""
    messages = []
    for turn in record["conversations"]:
        parts, pieces = [], turn["value"].split(image_token)
        for i, piece in enumerate(pieces):
            if i:
                parts.append({"type": "image"})
            piece = piece.strip("\n") if i or len(pieces) > 1 else piece
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": ROLES[turn["from"]], "content": parts})
    return messages


def image_paths(record: dict, folder: str | Path | None) -> list[Path]:
    images = record.get("image") or []
    images = [images] if isinstance(images, str) else images
    return [Path(folder or ".") / name for name in images]


def render_with_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text and the character spans of the assistant turns (what the loss trains on).

    Each assistant turn's span is what rendering it adds after the prompt that asks for it, so any template whose
    renderings of growing conversations are prefixes of each other works. Templates may read `end_answers_with_eos`
    (True here): mPLUG-Owl's ends answers with eos only in training renderings, as the original trains."""
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{type(processor).__name__} has no chat template: set processor.chat_template to one that "
                         "renders the conversation's turns")

    flags = {"end_answers_with_eos": True} if "end_answers_with_eos" in processor.chat_template else {}

    def render(msgs, prompt=False):
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt, **flags)

    full = render(messages)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:k], prompt=True)
        upto = render(messages[: k + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError("The chat template does not render conversations as prefixes of each other; cannot find the answers")
        spans.append((len(before), len(upto)))
    return full, spans


@dataclass
class Skipped:
    """Samples left out of training, with why (reported at the end of a run, never silently dropped)."""

    reasons: dict = field(default_factory=dict)

    def add(self, sample_id, reason: str):
        self.reasons[str(sample_id)] = reason


class ConversationCollator:
    """Records -> a right-padded batch: input_ids, attention_mask, labels (-100 except assistant tokens), the image
    inputs of the family (and Mllama's cross_attention_mask). A sample whose image tokens would not fit in max_length
    is skipped and reported.

    Uses from the processor: a chat template, `image_token(_id)`, `image_placeholder` (what the template writes per
    image; default image_token), `expand_image_tokens(text, sizes, spans)` (soft-prompt families) and
    `encode_with_offsets(text)` (families that tokenize the text between images piece by piece; default: the fast
    tokenizer on the whole text, no special tokens added, the template writes them)."""

    def __init__(self, processor, image_folder=None, max_length: int = 2048):
        self.processor, self.image_folder, self.max_length = processor, image_folder, max_length
        self.skipped = Skipped()

    def encode(self, record: dict) -> dict | None:
        """One record -> {"input_ids", "labels", image inputs} or None (skipped, with the reason recorded)."""
        p = self.processor
        paths = image_paths(record, self.image_folder)
        text, spans = render_with_spans(p, to_messages(record))
        placeholder = getattr(p, "image_placeholder", p.image_token)
        if text.count(placeholder) != len(paths):
            self.skipped.add(record.get("id"), f"{text.count(placeholder)} {placeholder} for {len(paths)} images")
            return None
        image_inputs = image_inputs_of(p, [str(x) for x in paths]) if paths else {}
        if hasattr(p, "expand_image_tokens"):
            sizes = image_inputs["image_sizes"].tolist() if "image_sizes" in image_inputs else [None] * len(paths)
            text, spans = p.expand_image_tokens(text, sizes, spans)
        ids, offsets = encode_with_offsets(p, text)
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == p.image_token_id), default=-1)
            if last_image >= self.max_length:
                self.skipped.add(record.get("id"), f"image tokens end at {last_image + 1} > max_length {self.max_length}")
                return None
            ids, offsets = ids[: self.max_length], offsets[: self.max_length]
        labels = [t if any(a <= s and e <= b for a, b in spans) else IGNORE_INDEX for t, (s, e) in zip(ids, offsets)]
        num_tiles = image_inputs.pop("num_tiles", None)
        if num_tiles is not None:  # Mllama: which text positions see which image's tiles
            mask = cross_attention_mask([ids], num_tiles, p.image_token_id, image_inputs["aspect_ratio_mask"].shape[-1])
            image_inputs["cross_attention_mask"] = torch.from_numpy(mask)  # (1, T, images, tiles)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **image_inputs}

    def __call__(self, records: list[dict]) -> dict:
        samples = [s for s in map(self.encode, records) if s is not None]
        if not samples:
            raise ValueError(f"Every sample of this batch was skipped: {self.skipped.reasons}")
        return pad_batch(samples, self.processor.tokenizer.pad_token_id or 0)


def image_inputs_of(processor, paths: list[str]) -> dict:
    """The image tensors of one sample as the family's processor makes them: per sample with a batch axis of 1 for the
    cross-attention families (Mllama also returns num_tiles), one row per image for the others."""
    if isinstance(processor, VlmhubMllamaProcessor):
        return dict(processor.image_processor([paths], return_tensors="pt"))
    if isinstance(processor, VlmhubFlamingoProcessor):
        return {"pixel_values": processor(images=[paths], return_tensors="pt")["pixel_values"]}
    return dict(processor.image_processor(paths, return_tensors="pt"))


def encode_with_offsets(processor, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of an expanded text and each token's character span in it."""
    if hasattr(processor, "encode_with_offsets"):
        return processor.encode_with_offsets(text)
    encoding = processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    return encoding["input_ids"], encoding["offset_mapping"]


# Image inputs of the cross-attention families besides pixel_values, all per sample: (batch, images, ...) or, for the
# mask, (batch, text, images, tiles).
PER_SAMPLE = ("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


def pad_batch(samples: list[dict], pad_id: int) -> dict:
    """Right padding for training. Soft-prompt image tensors are concatenated along the image axis; per-sample ones
    (6-D pixel_values, aspect ratios, cross_attention_mask) are padded with absent images to the most in the batch."""
    width = max(len(s["input_ids"]) for s in samples)
    batch = {
        "input_ids": torch.full((len(samples), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(samples), width, dtype=torch.long),
        "labels": torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long),
    }
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        batch["input_ids"][i, :n], batch["attention_mask"][i, :n], batch["labels"][i, :n] = s["input_ids"], 1, s["labels"]
    pixels = next((s["pixel_values"] for s in samples if "pixel_values" in s), None)
    if pixels is not None and pixels.ndim == 6:  # (1, images, tiles | frames, 3, H, W) per sample
        for key in ("pixel_values", *PER_SAMPLE):
            if any(key in s for s in samples):
                batch[key] = _pad_per_sample(samples, key, width)
    else:
        for key in ("pixel_values", "image_sizes"):
            parts = [s[key] for s in samples if key in s]
            if parts:
                batch[key] = _cat_padded(parts)
    return batch


def _pad_per_sample(samples: list[dict], key: str, width: int) -> torch.Tensor:
    """Stack (1, images, ...) tensors along the batch axis, padding the image axis (and the text axis of
    cross_attention_mask (1, T, images, tiles)) with absent images; samples without images get only absent ones."""
    template = next(s[key] for s in samples if key in s)
    axis = 2 if key == "cross_attention_mask" else 1
    most = max(s[key].shape[axis] if key in s else 0 for s in samples)
    rows = []
    for s in samples:
        shape = list(template.shape)
        shape[axis] = most
        if key == "cross_attention_mask":
            shape[1] = width
        row = torch.zeros(shape, dtype=template.dtype)
        if key == "aspect_ratio_mask":
            row[..., 0] = 1  # an absent image counts as one tile (the image processor's convention)
        if key in s:
            part = s[key]
            row[tuple(slice(0, n) for n in part.shape)] = part
        rows.append(row)
    return torch.cat(rows)


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding dim 1 (AnyRes crops) to the largest."""
    if parts[0].ndim < 5:
        return torch.cat(parts)
    most = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in parts])
