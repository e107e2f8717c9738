"""The embedded default models: each loads offline with its processor, stays within 10 MB of weights, was evaluated
on a held-out seed it never trained on (the generative ones: at least 95% exact match, the untrained model near 0),
and the generative ones answer a question about a fresh scene."""

import json
import random

import pytest
import torch

import vlmhub
from vlmhub import defaults
from vlmhub.data import scenes
from vlmhub.train import recipes


@pytest.mark.parametrize("name", defaults.available())
def test_default_model_loads_small_and_was_evaluated_on_unseen_scenes(name):
    folder = defaults.path(name)
    assert (folder / "model.safetensors").stat().st_size <= 10 * 2**20
    report = json.loads((folder / "evaluation.json").read_text())
    assert report["recipe"] == name and report.get("train_minutes_total", report["train_minutes"]) <= 15  # every stage
    model, processor = vlmhub.load_default(name)
    assert not model.training
    if name in recipes.GENERATIVE:
        assert report["heldout_seed"] != report["seed"] and report["trained"]["accuracy"] >= 0.95 > 0.1 > report["untrained"]["accuracy"]
        shapes = scenes.sample_scene(random.Random(11))
        inputs = processor(images=[scenes.draw(shapes, recipes.IMAGE_SIZE)],
                           text=recipes.prompt(processor, "How many shapes are there?"), return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert recipes.normalise(answer) in scenes.NUMBERS


@pytest.mark.parametrize("name", sorted(recipes.GENERATIVE))
def test_image_text_to_text_pipeline_answers_as_generate_does(name):
    """transformers' pipeline("image-text-to-text") runs every generative family from its folder, chat messages in,
    and gives the tokens of model.generate on the processor's inputs."""
    from transformers import pipeline

    image = scenes.draw(scenes.sample_scene(random.Random(11)), recipes.IMAGE_SIZE)
    question = "How many shapes are there?"
    pipe = pipeline("image-text-to-text", model=str(defaults.path(name)))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]
    reply = pipe(text=messages, generate_kwargs=dict(max_new_tokens=4, do_sample=False))[0]["generated_text"][-1]
    model, processor = vlmhub.load_default(name)
    inputs = processor(images=[image], text=recipes.prompt(processor, question), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply["role"] == "assistant" and reply["content"].strip() == answer.strip()  # the pipeline keeps a space
    assert recipes.normalise(answer) in scenes.NUMBERS
