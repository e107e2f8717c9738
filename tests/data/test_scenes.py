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


@pytest.mark.parametrize("index", range(0, 400, 7))
def test_drill_asks_every_question_and_leaks_no_answer(index):
    shapes, rng = SCENES[index], random.Random(index)
    turns = scenes.drill(shapes, rng)
    assert turns[0]["value"].startswith("<image>\n") and not any("<image>" in t["value"] for t in turns[1:])
    qa = [(q["value"].replace("<image>\n", ""), a["value"]) for q, a in zip(turns[0::2], turns[1::2])]
    kinds = [q.split()[0] + " " + q.split()[1] for q, _ in qa]
    nameable = sum(sum((t.shape, t.size) == (s.shape, s.size) for t in shapes) == 1 for s in shapes)
    assert kinds.count("What colour") == nameable and kinds.count("How many") == 1 and kinds.count("Is there") == 2
    assert sorted(a for q, a in qa if q.startswith("Is there")) == ["no", "yes"]
    for k, (question, answer) in enumerate(qa[1:], 1):  # after the random first turn, no earlier turn gives it away
        earlier = " ".join(q + " " + a for q, a in qa[1:k])
        if question.startswith("What colour"):
            assert f"{answer} {question.rstrip('?').split()[-1]}" not in earlier, (question, earlier)
        if question.startswith("Is there"):
            colour = question.split()[3]
            assert colour not in " ".join(q + " " + a for q, a in qa[1:k] if not q.startswith("Is there")), (question, earlier)
    assert scenes.drill(shapes, random.Random(index)) == turns
