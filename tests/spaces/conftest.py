"""The demo under test: the embedded default models when vlmhub has them, else tiny random stand-ins (a LLaVA with
the scenes tokenizer and a CLIP), and one app served on localhost for the client and browser tests."""

import socket
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

import vlmhub
from tests.conftest import tiny_text, tiny_vision
from tests.train.conftest import tiny_llava_folder

SPACES = Path(__file__).resolve().parents[2] / "spaces"
sys.path.insert(0, str(SPACES))  # app.py and chat.py are scripts of the Space, not a package

import chat  # noqa: E402

HAS_DEFAULTS = hasattr(vlmhub, "load_default")


def tiny_clip_folder(folder):
    torch.manual_seed(0)
    tokenizer = vlmhub.build_clip_tokenizer()
    config = vlmhub.CLIPConfig(vision_config=tiny_vision(image_size=16, patch_size=4),
                               text_config=tiny_text(vocab_size=len(tokenizer), max_position_embeddings=77,
                                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                     pad_token_id=tokenizer.pad_token_id), projection_dim=16)
    image_processor = vlmhub.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    vlmhub.CLIPModel(config).save_pretrained(folder)
    vlmhub.CLIPProcessor(image_processor, tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> tuple[dict, dict]:
    """({name: loader} for the chat, {name: loader} for CLIP): the defaults, or the stand-ins."""
    if HAS_DEFAULTS:
        return ({"llava": partial(chat.load_default, "llava")}, {"clip": partial(chat.load_default, "clip")})
    torch.manual_seed(0)
    llava = tiny_llava_folder(tmp_path_factory.mktemp("tiny-llava"), image_size=28)
    clip = tiny_clip_folder(tmp_path_factory.mktemp("tiny-clip"))
    return ({"tiny-llava": partial(chat.load_pretrained, str(llava))},
            {"tiny-clip": partial(chat.load_pretrained, str(clip), auto_model="AutoModel")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EndlessModel(torch.nn.Module):
    """Streams one token every 5 ms until a stopping criterion or max_new_tokens ends it; counts what it made."""

    def __init__(self, token_id: int):
        super().__init__()
        self.token_id, self.generated = token_id, 0
        self.config = type("Config", (), {"model_type": "endless"})()

    def generate(self, input_ids, streamer, stopping_criteria, max_new_tokens, **kwargs):
        streamer.put(input_ids)  # the prompt, which the streamer skips
        while self.generated < max_new_tokens and not stopping_criteria(input_ids, None).all():
            self.generated += 1
            streamer.put(torch.tensor([self.token_id]))
            time.sleep(0.005)
        streamer.end()


def endless_loader(chat_loaders: dict):
    """A loader of an EndlessModel with the first chat model's processor (for testing Stop)."""
    def load():
        _, processor = next(iter(chat_loaders.values()))()
        return EndlessModel(processor.tokenizer.convert_tokens_to_ids("yes")), processor
    return load


@pytest.fixture(scope="session")
def server(models):
    """The app served in this process on 127.0.0.1, with an extra "endless" chat model; yields its URL."""
    import app

    demo = app.build_app(models[0] | {"endless": endless_loader(models[0])}, models[1], concurrency=4)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                max_file_size="100mb")
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="session")
def examples(tmp_path_factory) -> list[tuple[str, str, str]]:
    """Scene images with a question and its answer: [(path, question, answer)]."""
    return chat.scene_examples(tmp_path_factory.mktemp("scenes"), count=4)


@pytest.fixture(scope="session")
def bad_uploads(tmp_path_factory, examples) -> dict[str, Path]:
    """A truncated PNG, a text file and a valid 50-megapixel PNG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("uploads")
    corrupt = folder / "corrupt.png"
    corrupt.write_bytes(Path(examples[0][0]).read_bytes()[:80])  # the header survives, the pixel data does not
    text = folder / "notes.txt"
    text.write_text("not an image\n")
    big = folder / "big.png"
    Image.new("RGB", (8660, 5774), (200, 40, 40)).save(big, compress_level=1)  # 50.0 MP, 0.7 MB on disk
    return {"corrupt": corrupt, "text": text, "big": big}
