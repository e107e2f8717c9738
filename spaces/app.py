"""vlmhub demo: chat with a vision-language model about an image, and zero-shot classification with CLIP.

    python spaces/app.py                                   # the embedded default models, on http://127.0.0.1:7860
    python spaces/app.py --chat-model mine=path/to/folder  # add a model to the selector (repeatable)

The layout lives here; the logic (model cache, prompts, streaming, image checks) is in chat.py beside this file.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial

import gradio as gr
import pandas as pd

import chat

# the first is what the chat starts on; the others are there to compare connectors on the same scenes
DEFAULT_CHAT = {f"{name} (embedded)": partial(chat.load_default, name) for name in ("llava", "blip2", "flamingo", "mllama")}
DEFAULT_CLIP = {"clip (embedded)": partial(chat.load_default, "clip")}
DEFAULT_LABELS = "red circle, blue square, green triangle, yellow square"
INTRO = ("# vlmhub demo\nAsk about an image (upload one with the paperclip, or pick an example below), or classify an "
         "image against your own labels in the CLIP tab. The model box takes the embedded defaults, a local folder "
         "or a Hugging Face Hub id.")


def chat_tab(cache: chat.ModelCache, concurrency: int) -> None:
    names = cache.names()
    with gr.Row():
        with gr.Column(scale=1, min_width=260):  # settings first: ChatInterface renders where it is created
            model = gr.Dropdown(names, value=names[0] if names else None, allow_custom_value=True, label="Model",
                                info="An embedded default, a local folder or a Hub id")
            load = gr.Button("Load model")
            max_new = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
            info = gr.Markdown(chat.info_markdown(None), elem_id="model-info")
        chat_column = gr.Column(scale=3)

    def respond(message, history, name, max_new_tokens, temp, p):
        settings = chat.Settings(max_new_tokens=max_new_tokens, temperature=temp, top_p=p)
        yield from chat.answer(cache, name, history, message, settings)

    def load_model(name):
        try:
            return chat.info_markdown(cache.get(name))
        except Exception as err:  # shown in the panel; the app keeps serving
            return f"{chat.ERROR_MARK} {err}"

    examples = chat.scene_examples(tempfile.mkdtemp(prefix="vlmhub-demo-examples-"))
    with chat_column:
        gr.ChatInterface(
            respond, multimodal=True, additional_inputs=[model, max_new, temperature, top_p], additional_outputs=[info],
            chatbot=gr.Chatbot(label="Chat", height=440, elem_id="chatbot"),
            textbox=gr.MultimodalTextbox(file_count="multiple", sources=["upload"], elem_id="chat-input",
                                         placeholder="Ask about the image..."),
            examples=[[{"text": q, "files": [path]}, model.value, 16, 0.0, 1.0] for path, q, _ in examples],
            stop_btn=True, concurrency_limit=concurrency, cache_examples=False, fill_height=False, api_name="chat",
        )
    load.click(load_model, model, info, api_name="load_model", concurrency_limit=concurrency)


def clip_tab(cache: chat.ModelCache, concurrency: int) -> None:
    names = cache.names()
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(names, value=names[0] if names else None, allow_custom_value=True, label="CLIP model",
                                info="An embedded default, a local folder or a Hub id")
            image = gr.Image(type="filepath", label="Image", sources=["upload"])
            labels = gr.Textbox(DEFAULT_LABELS, label="Labels (comma-separated)")
            template = gr.Textbox("a photo of a {}.", label="Prompt template")
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            top = gr.Label(label="Probabilities", num_top_classes=5)
            plot = gr.BarPlot(x="label", y="probability", y_lim=[0, 1], label="Probabilities", sort="-y")
            info = gr.Markdown(chat.info_markdown(None))

    def classify(name, path, labels_text, template_text):
        try:
            probs = chat.classify(cache, name, path, labels_text, template_text)
        except chat.DemoError as err:
            raise gr.Error(str(err)) from err
        frame = pd.DataFrame({"label": list(probs), "probability": list(probs.values())})
        return probs, frame, chat.info_markdown(cache.get(name), chat=False)

    run.click(classify, [model, image, labels, template], [top, plot, info], api_name="classify",
              concurrency_limit=concurrency)


def build_app(chat_models: dict | None = None, clip_models: dict | None = None, concurrency: int = 4) -> gr.Blocks:
    """The demo, with `chat_models` / `clip_models` ({name: zero-argument loader -> (model, processor)}) in the
    selectors, the embedded defaults when not given. Models load on first use and are shared by all sessions."""
    chat_cache = chat.ModelCache(DEFAULT_CHAT if chat_models is None else chat_models)
    clip_cache = chat.ModelCache(DEFAULT_CLIP if clip_models is None else clip_models,
                                 fallback=partial(chat.load_pretrained, auto_model="AutoModel"))
    with gr.Blocks(title="vlmhub demo") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Chat"):
            chat_tab(chat_cache, concurrency)
        with gr.Tab("Zero-shot (CLIP)"):
            clip_tab(clip_cache, concurrency)
    return demo.queue(default_concurrency_limit=concurrency, max_size=64)


def _named_folders(pairs: list[str], auto_model: str) -> dict:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=PATH, got {pair!r}")
        out[name] = partial(chat.load_pretrained, path, auto_model=auto_model)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--chat-model", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--clip-model", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--no-defaults", action="store_true", help="list only the models given on the command line")
    p.add_argument("--concurrency", type=int, default=4, help="requests served at once per event")
    a = p.parse_args(argv)
    chat_models = ({} if a.no_defaults else dict(DEFAULT_CHAT)) | _named_folders(a.chat_model, "AutoModelForImageTextToText")
    clip_models = ({} if a.no_defaults else dict(DEFAULT_CLIP)) | _named_folders(a.clip_model, "AutoModel")
    demo = build_app(chat_models, clip_models, a.concurrency)
    demo.launch(server_name=a.host, server_port=a.port, max_file_size="100mb")


if __name__ == "__main__":
    main()
