"""Training data in LLaVA's conversation JSON, turned into model inputs with labels on the assistant turns only.

A record: {"id": ..., "image": "a.png" | ["a.png", "b.png"] | absent, "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}. Image paths are relative to an image folder.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

IGNORE_INDEX = -100
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


def to_messages(record: dict, image_token: str = "<image>") -> list[dict]:
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
    renderings of growing conversations are prefixes of each other works."""
    full = processor.apply_chat_template(messages, tokenize=False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = processor.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        upto = processor.apply_chat_template(messages[: k + 1], tokenize=False)
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
    """Records -> a right-padded batch: input_ids, attention_mask, labels (-100 except assistant tokens), and the
    image processor's outputs. A sample whose image tokens would not fit in max_length is skipped and reported.

    Works with every processor that has `image_token`, `num_image_tokens(size)` and `expand_image_tokens(text, sizes)`
    (the soft-prompt families) and a fast tokenizer (for character offsets)."""

    def __init__(self, processor, image_folder=None, max_length: int = 2048):
        self.processor, self.image_folder, self.max_length = processor, image_folder, max_length
        self.skipped = Skipped()

    def encode(self, record: dict) -> dict | None:
        """One record -> {"input_ids", "labels", image inputs} or None (skipped, with the reason recorded)."""
        p = self.processor
        paths = image_paths(record, self.image_folder)
        text, spans = render_with_spans(p, to_messages(record, p.image_token))
        if text.count(p.image_token) != len(paths):
            self.skipped.add(record.get("id"), f"{text.count(p.image_token)} {p.image_token} for {len(paths)} images")
            return None
        image_inputs = dict(p.image_processor([str(x) for x in paths], return_tensors="pt")) if paths else {}
        sizes = image_inputs["image_sizes"].tolist() if "image_sizes" in image_inputs else [None] * len(paths)
        expanded, spans = p.expand_image_tokens(text, sizes, spans)
        encoding = p.tokenizer(expanded, return_offsets_mapping=True, add_special_tokens=False)
        ids = encoding["input_ids"]
        if len(ids) > self.max_length:
            last_image = max((i for i, t in enumerate(ids) if t == p.image_token_id), default=-1)
            if last_image >= self.max_length:
                self.skipped.add(record.get("id"), f"image tokens end at {last_image + 1} > max_length {self.max_length}")
                return None
            ids, encoding["offset_mapping"] = ids[: self.max_length], encoding["offset_mapping"][: self.max_length]
        labels = [t if any(a <= s and e <= b for a, b in spans) else IGNORE_INDEX
                  for t, (s, e) in zip(ids, encoding["offset_mapping"])]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), **image_inputs}

    def __call__(self, records: list[dict]) -> dict:
        samples = [s for s in map(self.encode, records) if s is not None]
        if not samples:
            raise ValueError(f"Every sample of this batch was skipped: {self.skipped.reasons}")
        return pad_batch(samples, self.processor.tokenizer.pad_token_id or 0)


def pad_batch(samples: list[dict], pad_id: int) -> dict:
    """Right padding for training; image tensors concatenated along the image axis."""
    width = max(len(s["input_ids"]) for s in samples)
    batch = {
        "input_ids": torch.full((len(samples), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(samples), width, dtype=torch.long),
        "labels": torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long),
    }
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        batch["input_ids"][i, :n], batch["attention_mask"][i, :n], batch["labels"][i, :n] = s["input_ids"], 1, s["labels"]
    for key in ("pixel_values", "image_sizes"):
        parts = [s[key] for s in samples if key in s]
        if parts:
            batch[key] = _cat_padded(parts)
    return batch


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding dim 1 (AnyRes crops) to the largest."""
    if parts[0].ndim < 5:
        return torch.cat(parts)
    most = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in parts])
