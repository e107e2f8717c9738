"""The default-model recipes' training records, and a two-step LLaVA recipe run end to end."""

import json

import pytest

from vlmhub.data import scenes
from vlmhub.train import recipes
from vlmhub.train.data import load_records


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    scenes.generate(folder, train=6, test=0, size=recipes.IMAGE_SIZE, seed=5)
    return folder


def test_qa_records_leave_out_the_descriptions(split):
    records = load_records(recipes.write_training_records(split, "qa", seed=0))
    assert len(records) == 12 and not any("Describe" in r["conversations"][0]["value"] for r in records)


def test_drills_are_one_conversation_per_image_with_every_question(split):
    path = recipes.write_training_records(split, "drills", seed=0)
    drills = load_records(path)
    assert sorted(d["image"] for d in drills) == [f"train_{i:05d}.png" for i in range(6)]
    first = {r["image"]: r for r in json.loads((split / "train.json").read_text())}
    for d in drills:
        shapes = [scenes.Shape(**o) for o in first[d["image"]]["objects"]]
        turns = d["conversations"]
        assert len(turns) >= 6 and turns[0]["value"].startswith("<image>\n")
        qa = {q["value"].replace("<image>\n", ""): a["value"] for q, a in zip(turns[0::2], turns[1::2])}
        assert qa["How many shapes are there?"] == scenes.NUMBERS[len(shapes)]
    assert recipes.write_training_records(split, "drills", seed=0).read_text() == path.read_text()


def test_llava_recipe_trains_on_drills_and_reports(tmp_path, capsys):
    recipes.main(["llava", "--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--train-images", "3",
                  "--test-images", "1", "--data", "drills"])
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["data"] == "drills" and report["steps"] == 2 and 0.0 <= report["trained"]["accuracy"] <= 1.0
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()
