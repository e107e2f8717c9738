"""The default-model recipes' training records; the LLaVA, BLIP-2 and Flamingo recipes' models start from the CLIP's
tower 1:1; every generative recipe runs end to end (two steps); Mllama's tiled tower refuses a CLIP start."""

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForImageTextToText

import vlmhub  # noqa: F401  (registers the Auto classes)

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


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return recipes.clip_initial(tmp_path_factory.mktemp("clip"), seed=3)


@pytest.mark.parametrize("recipe", sorted(r for r, (_, tower) in recipes.GENERATIVE.items() if tower))
def test_generative_recipes_start_from_the_clip_tower(recipe, clip, tmp_path):
    build, tower = recipes.GENERATIVE[recipe]
    folder = build(tmp_path / recipe)
    recipes.copy_vision_tower(folder, clip, tower)
    got = AutoModelForImageTextToText.from_pretrained(folder).get_submodule(tower).state_dict()
    want = AutoModel.from_pretrained(clip).vision_model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("recipe", ["blip2", "flamingo", "mllama"])
def test_other_connector_recipes_run_and_report(recipe, tmp_path):
    recipes.main([recipe, "--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--train-images", "3",
                  "--test-images", "1"])
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["recipe"] == recipe and report["steps"] == 2 and 0.0 <= report["trained"]["accuracy"] <= 1.0
    config = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").config
    assert config.model_type == f"vlmhub_{recipe}"


def test_a_tower_that_is_not_a_clip_refuses_to_start_from_one(clip, tmp_path):
    with pytest.raises(ValueError, match="mllama recipe's image tower is not a CLIP's"):
        recipes.main(["mllama", "--out", str(tmp_path / "out"), "--steps", "1", "--train-images", "2", "--test-images", "1",
                      "--vision-from", str(clip)])


@pytest.mark.parametrize("recipe", sorted(recipes.GENERATIVE))
def test_generation_stops_where_the_chat_template_ends_an_answer(recipe, tmp_path):
    from transformers import AutoProcessor, GenerationConfig

    folder = recipes.GENERATIVE[recipe][0](tmp_path / recipe)
    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red shape?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "yes"}]}]
    ids = processor.tokenizer(processor.apply_chat_template(messages), add_special_tokens=False)["input_ids"]
    after = ids[len(ids) - 1 - ids[::-1].index(processor.tokenizer.convert_tokens_to_ids("yes")) + 1]
    stop = GenerationConfig.from_pretrained(folder).eos_token_id
    assert after in (stop if isinstance(stop, list) else [stop])
