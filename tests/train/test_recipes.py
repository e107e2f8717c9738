"""The default-model recipes' training records; the scene parser's targets; the LLaVA, BLIP-2 and Flamingo recipes'
models start from a tower of their layout 1:1 (the tower recipe's or the CLIP's; Mllama's tiled one) and keep it
frozen, and refuse one of another layout; every recipe runs end to end (two steps), and a second stage continues the first."""

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


def test_a_second_stage_trains_on_drills_from_the_first_and_adds_up_the_minutes(tmp_path):
    common = ["--steps", "2", "--batch-size", "2", "--train-images", "3", "--test-images", "1"]
    recipes.main(["llava", "--out", str(tmp_path / "qa"), *common])
    recipes.main(["llava", "--out", str(tmp_path / "out"), *common, "--data", "drills", "--start-from", str(tmp_path / "qa")])
    first, report = (json.loads((tmp_path / name / "evaluation.json").read_text()) for name in ("qa", "out"))
    assert report["data"] == "drills" and report["steps"] == 2 and 0.0 <= report["trained"]["accuracy"] <= 1.0
    assert report["start_from"] == str(tmp_path / "qa") and first["train_minutes_total"] == first["train_minutes"]
    assert report["train_minutes_total"] == pytest.approx(first["train_minutes"] + report["train_minutes"], abs=0.011)
    assert (tmp_path / "out" / "model.safetensors").exists() and (tmp_path / "out" / "tokenizer.json").exists()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return recipes.clip_initial(tmp_path_factory.mktemp("clip"), seed=3)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    tower, processor = recipes.tower_initial("mllama", seed=3)
    folder = tmp_path_factory.mktemp("tiled")
    tower.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("recipe", sorted(recipes.GENERATIVE))
def test_generative_recipes_start_from_a_tower_of_their_layout(recipe, clip, tiled, tmp_path):
    build, tower = recipes.GENERATIVE[recipe]
    folder, source = build(tmp_path / recipe), tiled if recipe == "mllama" else clip
    recipes.copy_vision_tower(folder, source, tower)
    got = AutoModelForImageTextToText.from_pretrained(folder).get_submodule(tower).state_dict()
    want = AutoModel.from_pretrained(source).vision_model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("recipe", ["blip2", "flamingo", "mllama"])
def test_other_connector_recipes_run_and_report(recipe, tmp_path):
    recipes.main([recipe, "--out", str(tmp_path / "out"), "--steps", "2", "--batch-size", "2", "--train-images", "3",
                  "--test-images", "1"])
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["recipe"] == recipe and report["steps"] == 2 and 0.0 <= report["trained"]["accuracy"] <= 1.0
    config = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").config
    assert config.model_type == f"vlmhub_{recipe}"


def test_a_tower_of_another_layout_is_refused(clip, tiled, tmp_path):
    with pytest.raises(ValueError, match="keeps a MllamaVisionTower image tower; .* holds a VisionTransformer .*--layout mllama"):
        recipes.main(["mllama", "--out", str(tmp_path / "out"), "--steps", "1", "--train-images", "2", "--test-images", "1",
                      "--vision-from", str(clip)])
    with pytest.raises(ValueError, match="keeps a VisionTransformer image tower; .* holds a MllamaVisionTower .*--layout clip"):
        recipes.copy_vision_tower(recipes.llava_initial(tmp_path / "llava"), tiled)


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


def test_scene_parser_names_the_object_on_each_patch():
    shapes = [scenes.Shape("triangle", "red", "big", 0.271, 0.657), scenes.Shape("square", "orange", "small", 0.7, 0.25)]
    targets = recipes.parse_targets(shapes, grid=6)
    assert targets.shape == (36, 3)
    under = lambda s: int(s.y * 6) * 6 + int(s.x * 6)
    for s in shapes:
        assert targets[under(s)].tolist() == [list(scenes.COLOURS).index(s.colour), scenes.SHAPES.index(s.shape),
                                              list(scenes.SIZES).index(s.size)]
    assert targets[35].tolist() == [len(scenes.COLOURS), len(scenes.SHAPES), len(scenes.SIZES)]  # bottom right: background
    assert (targets[:, 0] == len(scenes.COLOURS)).sum() == 36 - 6 - 2  # the triangle covers 3x2 patches, the square 2x1
    where = recipes.parse_targets(shapes, grid=6, where=True)
    assert torch.equal(where[:, :3], targets)
    assert where[under(shapes[0])].tolist()[3] == int(0.271 * recipes.PARSE_COLUMNS)  # the column its centre is in
    assert where[35].tolist()[3] == -100  # none: not scored


def test_tower_recipe_makes_the_tower_a_recipe_starts_from_and_keeps_frozen(tmp_path):
    recipes.main(["tower", "--out", str(tmp_path / "tower"), "--steps", "2", "--batch-size", "2", "--where"])
    report = json.loads((tmp_path / "tower" / "evaluation.json").read_text())
    assert report["recipe"] == "tower" and report["where"] and set(report["trained"]) == {"colour", "shape", "size", "all_three", "objects"}
    recipes.main(["llava", "--out", str(tmp_path / "llava"), "--steps", "2", "--batch-size", "2", "--train-images", "3",
                  "--test-images", "1", "--vision-from", str(tmp_path / "tower")])
    got = AutoModelForImageTextToText.from_pretrained(tmp_path / "llava").vision_tower.state_dict()
    want = AutoModel.from_pretrained(tmp_path / "tower").vision_model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_tiled_tower_tokens_go_back_to_their_place_on_the_scene_grid():
    class Tiles(torch.nn.Module):  # token value = tile * 9 + patch, after a CLS token
        def forward(self, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
            ids = torch.arange(4 * 9, dtype=torch.float).reshape(1, 1, 4, 9, 1)
            return type("Out", (), {"last_hidden_state": torch.cat([torch.full((1, 1, 4, 1, 1), -1.0), ids], dim=3)})

    tokens = recipes.grid_tokens(Tiles(), {"pixel_values": None, "aspect_ratio_ids": None, "aspect_ratio_mask": None})
    want = [(r // 3 * 2 + c // 3) * 9 + (r % 3) * 3 + c % 3 for r in range(6) for c in range(6)]
    assert tokens.flatten().tolist() == want


def test_tower_recipe_parses_mllamas_tiled_tower(tmp_path):
    recipes.main(["tower", "--layout", "mllama", "--where", "--out", str(tmp_path / "tiled"), "--steps", "1", "--batch-size", "2"])
    report = json.loads((tmp_path / "tiled" / "evaluation.json").read_text())
    assert report["layout"] == "mllama" and report["where"]
    recipes.copy_vision_tower(recipes.mllama_initial(tmp_path / "mllama"), tmp_path / "tiled", "vision_model")
