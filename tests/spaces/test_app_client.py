"""The app served on localhost, driven with gradio_client: chat turns with images (streamed), the CLIP tab,
8 concurrent clients, and bad uploads answered in the chat while the app keeps serving."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.spaces.conftest import HAS_DEFAULTS, chat

gradio_client = pytest.importorskip("gradio_client")

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def ask(client, models, path, question, max_new_tokens=8):
    """One chat turn through the API; returns every streamed (answer, info) update."""
    message = {"text": question, "files": [gradio_client.handle_file(str(path))] if path else []}
    job = client.submit(message, next(iter(models[0])), max_new_tokens, 0.0, 1.0, api_name="/chat")
    job.result(timeout=TIMEOUT_S)
    return job.outputs()


def test_a_chat_turn_with_an_image_streams_the_answer(client, models, examples):
    path, question, expected = examples[0]
    updates = ask(client, models, path, question)
    answer, info = updates[-1]
    assert answer.strip() and not answer.startswith(chat.ERROR_MARK), answer
    assert "visual tokens (current image)" in info
    texts = [a for a, _ in updates]
    assert len(texts) >= 2 and all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # grows token by token
    if HAS_DEFAULTS:
        assert expected in answer.lower(), (question, expected, answer)


def test_the_clip_tab_returns_probabilities_that_sum_to_one(client, models, examples):
    label, plot, info = client.predict(next(iter(models[1])), gradio_client.handle_file(examples[0][0]),
                                       "red circle, blue square, green triangle", "a photo of a {}.", api_name="/classify")
    probs = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(probs) == {"red circle", "blue square", "green triangle"}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert [row[0] for row in plot["data"]] and "family | clip" in info


def test_eight_concurrent_clients_each_complete_a_turn(server, models, examples):
    def one_user(i):
        own = gradio_client.Client(server, verbose=False)
        path, question, _ = examples[i % len(examples)]
        return ask(own, models, path, question)[-1][0]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one_user, range(8), timeout=TIMEOUT_S * 2))
    assert len(answers) == 8 and all(a.strip() and not a.startswith(chat.ERROR_MARK) for a in answers), answers


@pytest.mark.parametrize("kind, words", [("corrupt", "corrupt or truncated"), ("text", "not an image"),
                                         ("big", "50.0 megapixels")])
def test_bad_uploads_get_a_message_and_the_app_keeps_serving(client, models, examples, bad_uploads, kind, words):
    answer, info = ask(client, models, bad_uploads[kind], "What is this?")[-1]
    assert answer.startswith(chat.ERROR_MARK) and words in answer, answer
    answer, _ = ask(client, models, examples[1][0], examples[1][1])[-1]
    assert answer.strip() and not answer.startswith(chat.ERROR_MARK)


def test_loading_errors_are_shown(client):
    info = client.predict("/no/such/model", api_name="/load_model")
    assert info.startswith(chat.ERROR_MARK) and "No model folder at '/no/such/model'" in info


def test_stop_ends_generation_on_the_server(client, server):
    """Cancelling the event (what the Stop button does) closes the answer generator, which stops generate()."""
    import threading
    import time

    alive = lambda: [t for t in threading.enumerate() if t.name == "vlmhub-generate" and t.is_alive()]  # noqa: E731
    job = client.submit({"text": "yes?", "files": []}, "endless", 500, 0.0, 1.0, api_name="/chat")  # 500 tokens = 2.5 s
    deadline = time.monotonic() + TIMEOUT_S
    while not (job.outputs() and job.outputs()[-1][0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(), "generation should be running"
    job.cancel()
    deadline = time.monotonic() + 2
    while alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive() and len(job.outputs()[-1][0].split()) < 300
