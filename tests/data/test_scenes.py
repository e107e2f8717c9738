"""The synthetic scenes: seeded, no overlapping shapes, and only questions the image answers unambiguously."""

import json
import random

import pytest

from vlmhub.data import scenes

SCENES = [scenes.sample_scene(random.Random(seed)) for seed in range(400)]


def test_shapes_never_overlap():
    for shapes in SCENES:
        for i, a in enumerate(shapes):
            for b in shapes[i + 1:]:
                clear = (scenes.SIZES[a.size] + scenes.SIZES[b.size]) / 2
                assert abs(a.x - b.x) > clear or abs(a.y - b.y) > clear, (a, b)


@pytest.mark.parametrize("index", range(0, 400, 7))
def test_every_question_is_well_posed(index):
    shapes, rng = SCENES[index], random.Random(index)
    for question, answer in scenes.questions(shapes, rng):
        words = question.rstrip("?").split()
        if question.startswith("What colour is the"):
            named = words[4:]  # [size] shape
            matches = [s for s in shapes if s.shape == named[-1] and (len(named) == 1 or s.size == named[0])]
            assert len(matches) == 1 and matches[0].colour == answer, question
        elif question.startswith("Is there a"):
            assert answer == ("yes" if any(s.colour == words[3] for s in shapes) else "no")
        elif question.startswith("Is the "):
            a = next(s for s in shapes if (s.colour, s.shape) == (words[2], words[3]))
            b = next(s for s in shapes if (s.colour, s.shape) == (words[-2], words[-1]))
            assert abs(a.x - b.x) >= scenes.MARGIN and answer == ("yes" if a.x < b.x else "no")
        elif question.startswith("Which shape is on the far left"):
            assert shapes[1].x - shapes[0].x >= scenes.MARGIN
            assert answer == f"the {shapes[0].colour} {shapes[0].shape}"
        elif question.startswith("How many"):
            assert answer == scenes.NUMBERS[len(shapes)]


def test_generation_is_a_pure_function_of_the_seed(tmp_path):
    for folder in ("a", "b"):
        scenes.generate(tmp_path / folder, train=5, test=2, size=32, seed=3)
    for split in ("train.json", "test.json"):
        assert (tmp_path / "a" / split).read_text() == (tmp_path / "b" / split).read_text()
    records = json.loads((tmp_path / "a" / "train.json").read_text())
    assert len(records) == 15 and all(r["conversations"][0]["value"].startswith("<image>\n") for r in records)
    assert (tmp_path / "a" / "images" / "train_00004.png").read_bytes() == (tmp_path / "b" / "images" / "train_00004.png").read_bytes()
