"""Synthetic scenes: 1-4 coloured shapes on a plain background, with LLaVA-format conversations about them.

The conversations are built from each scene's object list and boxes the way LLaVA builds its instruction data from
COCO captions and boxes with GPT-4 (a detailed description, reasoning Q&A, a multi-turn conversation), by templates
instead of a language model. Everything is a pure function of the seed.

    python -m vlmhub.data.scenes --out data/scenes --train 2000 --test 200 --size 64
"""

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
           "purple": (150, 60, 190), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.16, "big": 0.3}  # shape width as a fraction of the image side
NUMBERS = ("zero", "one", "two", "three", "four")
GAP = 0.02  # least free space between two shapes' boxes, as a fraction of the image side
MARGIN = 0.12  # least horizontal distance between centres for a left/right question to be well posed


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a fraction of the image width
    y: float

    @property
    def name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


def sample_scene(rng: random.Random, max_shapes: int = 4) -> list[Shape]:
    """1..max_shapes shapes, distinct (colour, shape) pairs, none overlapping another, sorted left to right."""
    shapes, taken = [], set()
    for _ in range(rng.randint(1, max_shapes)):
        for _attempt in range(50):
            kind, colour, size = rng.choice(SHAPES), rng.choice(list(COLOURS)), rng.choice(list(SIZES))
            x, y = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8)
            apart = lambda s: (SIZES[size] + SIZES[s.size]) / 2 + GAP  # centre distance at which the boxes clear
            if (kind, colour) not in taken and all(abs(x - s.x) > apart(s) or abs(y - s.y) > apart(s) for s in shapes):
                shapes.append(Shape(kind, colour, size, round(x, 3), round(y, 3)))
                taken.add((kind, colour))
                break
    return sorted(shapes, key=lambda s: s.x)


def draw(shapes: list[Shape], size: int = 64, background=(245, 245, 240)) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    for s in shapes:
        r = SIZES[s.size] * size / 2
        cx, cy = s.x * size, s.y * size
        box = (cx - r, cy - r, cx + r, cy + r)
        if s.shape == "circle":
            pen.ellipse(box, fill=COLOURS[s.colour])
        elif s.shape == "square":
            pen.rectangle(box, fill=COLOURS[s.colour])
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[s.colour])
    return image


def caption(shapes: list[Shape]) -> str:
    names = [f"a {s.name}" for s in shapes]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"There {'is' if len(shapes) == 1 else 'are'} {NUMBERS[len(shapes)]} shape{'s' if len(shapes) > 1 else ''}: {listed}."


def description(shapes: list[Shape]) -> str:
    """A detailed description: every shape with where it is, left to right."""
    where = lambda s: ("top" if s.y < 0.4 else "bottom" if s.y > 0.6 else "middle") + " " + (
        "left" if s.x < 0.4 else "right" if s.x > 0.6 else "centre")
    parts = [f"the {s.name} is at the {where(s)}" for s in shapes]
    return caption(shapes) + " From left to right, " + "; ".join(parts) + "."


def names(shapes: list[Shape]) -> dict[Shape, str]:
    """The shapes the words pick out alone, each with its words: "square" if it is the only square, else "small square"
    if it is the only small square (a shape that shares both shape and size with another has no name)."""
    return {s: s.shape if sum(t.shape == s.shape for t in shapes) == 1 else f"{s.size} {s.shape}"
            for s in shapes if sum((t.shape, t.size) == (s.shape, s.size) for t in shapes) == 1}


def probe_colours(shapes: list[Shape], rng: random.Random) -> tuple[str, str]:
    """A colour in the scene and one that is not, for "Is there a ... shape?"."""
    return rng.choice(shapes).colour, rng.choice([c for c in COLOURS if c not in {t.colour for t in shapes}] or ["white"])


def exists(colour: str, shapes: list[Shape]) -> tuple[str, str]:
    return f"Is there a {colour} shape?", "yes" if any(s.colour == colour for s in shapes) else "no"


def left_of(a: Shape, b: Shape) -> tuple[str, str]:
    return f"Is the {a.colour} {a.shape} left of the {b.colour} {b.shape}?", "yes" if a.x < b.x else "no"


def far_left(shapes: list[Shape]) -> list[tuple[str, str]]:
    """The far-left question, when it is well posed (shapes sorted left to right, the first two MARGIN apart)."""
    if len(shapes) > 1 and shapes[1].x - shapes[0].x >= MARGIN:
        return [("Which shape is on the far left?", f"the {shapes[0].colour} {shapes[0].shape}")]
    return []


def chat_turns(qa: list[tuple[str, str]]) -> list[dict]:
    """LLaVA conversation turns for (question, answer) pairs, the image placeholder on the first question."""
    turns = []
    for i, (question, answer) in enumerate(qa):
        turns += [{"from": "human", "value": ("<image>\n" if i == 0 else "") + question}, {"from": "gpt", "value": answer}]
    return turns


def questions(shapes: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs a reader of the image can answer: colour, count, left of, yes/no.

    Only well-posed questions: a colour question names a shape the words pick out alone, and left/right questions
    are asked only of shapes at least MARGIN apart horizontally."""
    qa = []
    named = names(shapes)
    if named:
        s = rng.choice(list(named))
        qa.append((f"What colour is the {named[s]}?", s.colour))
    qa.append(("How many shapes are there?", NUMBERS[len(shapes)]))
    qa.append(exists(rng.choice(probe_colours(shapes, rng)), shapes))
    pairs = [(a, b) for a in shapes for b in shapes if a is not b and abs(a.x - b.x) >= MARGIN]
    if pairs:
        qa.append(left_of(*rng.choice(pairs)))
    return qa + far_left(shapes)


def drill(shapes: list[Shape], rng: random.Random, most_pairs: int = 3) -> list[dict]:
    """One multi-turn conversation asking every well-posed question of the scene: two yes/no colour probes (one
    present, one absent), the count, the colour of every shape the words pick out alone, the far-left shape and up to
    `most_pairs` left/right pairs. Training data for small models, which learn the lookups from many questions per
    image.

    After the first turn (one question drawn at random, so that any kind can open a chat) no answer can be read off an
    earlier turn: colour questions come after the probes (which name colours alone) and before the far-left and
    left/right questions (which name colour and shape together)."""
    first = [exists(c, shapes) for c in probe_colours(shapes, rng)] + [("How many shapes are there?", NUMBERS[len(shapes)])]
    colour = [(f"What colour is the {name}?", s.colour) for s, name in names(shapes).items()]
    where = far_left(shapes)
    pairs = [(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1:] if b.x - a.x >= MARGIN]
    for a, b in rng.sample(pairs, min(most_pairs, len(pairs))):
        where.append(left_of(a, b) if rng.random() < 0.5 else left_of(b, a))
    for group in (first, colour, where):
        rng.shuffle(group)
    qa = first + colour + where
    qa.insert(0, qa.pop(rng.randrange(len(qa))))
    return chat_turns(qa)


def conversations(shapes: list[Shape], rng: random.Random) -> list[dict]:
    """Three LLaVA-style records' conversations: detailed description, one reasoning Q&A, a multi-turn chat."""
    qa = questions(shapes, rng)
    one = rng.choice(qa)
    return [chat_turns([("Describe the image in detail.", description(shapes))]), chat_turns([one]),
            chat_turns(rng.sample(qa, min(3, len(qa))))]


def generate(out: str | Path, train: int = 1000, test: int = 100, size: int = 64, seed: int = 0) -> dict:
    """Write images/ and train.json / test.json (LLaVA format) under `out`; returns the record counts."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n, split_seed in (("train", train, seed), ("test", test, seed + 10_000)):
        rng, records = random.Random(split_seed), []
        for i in range(n):
            shapes = sample_scene(rng)
            name = f"{split}_{i:05d}.png"
            draw(shapes, size).save(out / "images" / name)
            for k, conv in enumerate(conversations(shapes, rng)):
                records.append({"id": f"{split}-{i}-{k}", "image": name, "conversations": conv,
                                "objects": [s.__dict__ for s in shapes], "caption": caption(shapes)})
        (out / f"{split}.json").write_text(json.dumps(records, indent=1))
        counts[split] = len(records)
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(generate(a.out, a.train, a.test, a.size, a.seed))


if __name__ == "__main__":
    main()
