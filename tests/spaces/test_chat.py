"""The demo's logic without a server: history -> prompt, image checks, the shared model cache, streaming and Stop,
zero-shot classification."""

import threading
import time

import pytest
import torch

from tests.spaces.conftest import HAS_DEFAULTS, chat, endless_loader

IMAGE = "/img/a.png"


def gradio_history(image=IMAGE):
    """Chatbot history as Gradio 6 hands it to the chat function (normalised messages)."""
    return [
        {"role": "user", "content": [{"type": "file", "file": {"path": image, "mime_type": "image/png"}, "alt_text": None}]},
        {"role": "user", "content": [{"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
    ]


@pytest.fixture(scope="module")
def llava(models):
    name, loader = next(iter(models[0].items()))
    return chat.ModelCache({name: loader}).get(name)


@pytest.fixture(scope="module")
def clip_cache(models):
    return chat.ModelCache(models[1])


def test_history_becomes_template_messages_with_images_first():
    turns = chat.conversation(gradio_history(), {"text": "How many shapes are there?", "files": []})
    messages, paths = chat.template_messages(turns)
    assert paths == [IMAGE]
    assert messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        {"role": "user", "content": [{"type": "text", "text": "How many shapes are there?"}]},
    ]


def test_exchanges_answered_by_an_error_leave_the_prompt():
    history = gradio_history() + [
        {"role": "user", "content": [{"type": "file", "file": {"path": "/img/broken.png"}}]},
        {"role": "user", "content": [{"type": "text", "text": "and this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": f"{chat.ERROR_MARK} 'broken.png' is corrupt"}]},
    ]
    messages, paths = chat.template_messages(chat.conversation(history, "thanks"))
    assert paths == [IMAGE] and len(messages) == 3 and messages[-1]["content"][0]["text"] == "thanks"


def test_history_is_in_the_llava_prompt(llava):
    messages, _ = chat.template_messages(chat.conversation(gradio_history(), "How many shapes are there?"))
    prompt = chat.build_prompt(llava.processor, messages)
    assert prompt.endswith("USER: <image>\nWhat colour is the circle? ASSISTANT: red</s>USER: How many shapes are there? ASSISTANT:")


def test_the_plain_transcript_without_a_chat_template():
    class Bare:
        chat_template = None
        image_token = "<img>"

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    assert chat.build_prompt(Bare(), messages) == "User: <img>\nhi\nAssistant:"


def test_family_image_limits():
    two = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "compare"}]}]
    with pytest.raises(chat.DemoError, match="mllama takes at most 1 image per message; message 1 has 2"):
        chat.check_image_limit("mllama", two)
    chat.check_image_limit("llava", two)  # within LLaVA's default of 4


@pytest.mark.parametrize("kind, words", [("corrupt", "corrupt or truncated"), ("text", "not an image"),
                                         ("big", "8660x5774 = 50.0 megapixels")])
def test_bad_images_give_readable_errors(bad_uploads, kind, words):
    with pytest.raises(chat.DemoError, match=words):
        chat.open_image(bad_uploads[kind])


def test_the_cache_loads_once_under_concurrency():
    calls = []

    def slow_loader():
        calls.append(1)
        time.sleep(0.2)
        return torch.nn.Linear(2, 2), "processor"

    cache = chat.ModelCache({"m": slow_loader})
    threads = [threading.Thread(target=cache.get, args=("m",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(calls) == 1 and cache.get("m").load_seconds >= 0.2


def test_unknown_names_are_loaded_as_folders_and_errors_are_readable(tmp_path):
    cache = chat.ModelCache({})
    with pytest.raises(chat.DemoError, match="No model folder at '/no/such/model'"):
        cache.get("/no/such/model")
    with pytest.raises(chat.DemoError, match="Could not load"):
        cache.get(str(tmp_path))  # a folder without a model


@pytest.mark.skipif(HAS_DEFAULTS, reason="vlmhub has load_default")
def test_missing_defaults_are_explained():
    with pytest.raises(chat.DemoError, match="no load_default"):
        chat.load_default("llava")


def test_a_turn_streams_an_answer_and_fills_the_info_panel(models, examples):
    cache = chat.ModelCache(models[0])
    path, question, expected = examples[0]
    steps = list(chat.answer(cache, cache.names()[0], [], {"text": question, "files": [path]}, chat.Settings(max_new_tokens=6)))
    text, info = steps[-1]
    assert not text.startswith(chat.ERROR_MARK) and text.strip()
    assert "family | llava" in info and "visual tokens (current image)" in info and "load time" in info
    if HAS_DEFAULTS:
        assert expected in text.lower()
    else:  # the stand-in: 28 px images in 7 px patches
        assert "visual tokens (current image) | 16 |" in info


def test_errors_are_yielded_as_chat_messages(models, bad_uploads):
    cache = chat.ModelCache(models[0])
    for path in bad_uploads.values():
        (text, info), = chat.answer(cache, cache.names()[0], [], {"text": "what is it?", "files": [str(path)]}, chat.Settings())
        assert text.startswith(chat.ERROR_MARK) and path.name in text and text in info
    (text, _), = chat.answer(cache, "", [], "hi", chat.Settings())
    assert text == f"{chat.ERROR_MARK} Choose a model first."


def test_sampling_settings():
    assert chat.generation_kwargs(chat.Settings(max_new_tokens=5, temperature=0)) == {"max_new_tokens": 5, "do_sample": False}
    sampled = chat.generation_kwargs(chat.Settings(temperature=0.7, top_p=0.9))
    assert sampled["do_sample"] and sampled["temperature"] == 0.7 and sampled["top_p"] == 0.9


@pytest.mark.parametrize("how", ["event", "close"])
def test_stop_ends_generation(models, how):
    model, processor = endless_loader(models[0])()
    loaded = chat.Loaded("endless", model, processor, 0.0)
    stop = threading.Event()
    stream = chat.stream_answer(loaded, {"input_ids": torch.tensor([[model.token_id]])}, chat.Settings(max_new_tokens=100_000), stop)
    for i, text in enumerate(stream):
        if i == 3:
            stop.set() if how == "event" else stream.close()  # the Stop button / Gradio closing the generator
            break
    time.sleep(0.2)
    assert stop.is_set() and model.generated < 200, model.generated
    assert not any(t.name == "vlmhub-generate" and t.is_alive() for t in threading.enumerate())


def test_zero_shot_probabilities_sum_to_one(clip_cache, examples):
    probs = chat.classify(clip_cache, clip_cache.names()[0], examples[0][0], "red circle, blue square,\ngreen triangle, red circle")
    assert list(probs) == ["red circle", "blue square", "green triangle"]  # split on commas and lines, deduplicated
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(chat.DemoError, match="at least one label"):
        chat.classify(clip_cache, clip_cache.names()[0], examples[0][0], " , ")
    with pytest.raises(chat.DemoError, match="must contain"):
        chat.classify(clip_cache, clip_cache.names()[0], examples[0][0], "cat", template="a photo")


def test_scene_examples_are_reproducible(tmp_path):
    first, second = chat.scene_examples(tmp_path / "a"), chat.scene_examples(tmp_path / "b")
    assert [(q, a) for _, q, a in first] == [(q, a) for _, q, a in second]
    assert all(open(p, "rb").read() == open(q, "rb").read() for (p, *_), (q, *_) in zip(first, second))


@pytest.mark.skipif(not HAS_DEFAULTS, reason="vlmhub has no load_default")
@pytest.mark.parametrize("name, tokens", [("blip2", 32), ("flamingo", 16), ("mllama", 40)])
def test_other_connector_defaults_answer_and_count_their_visual_tokens(tmp_path, name, tokens):
    cache = chat.ModelCache({name: lambda: chat.load_default(name)})
    path, question, _ = chat.scene_examples(tmp_path)[0]
    turns = list(chat.answer(cache, name, [], {"text": question, "files": [path]}, chat.Settings(max_new_tokens=8)))
    text, info = turns[-1]
    assert text.strip() and not text.startswith(chat.ERROR_MARK)
    # Q-Former queries, Perceiver latents, 4 tiles x (9 patches + class token): not the one image token in the text
    assert f"| visual tokens (current image) | {tokens} |" in info
