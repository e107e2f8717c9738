"""Shared fixtures: tiny configs of every family, and the oracle bundles in tests/fixtures/."""

from pathlib import Path

import PIL
import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"

# Tiny models run fastest on one thread, and several threads per process oversubscribe a 2-core machine.
torch.set_num_threads(1)

# The oracle bundles' pixels were made with Pillow 13, and our preprocessing reproduces them exactly there. gradio (the
# demo) pins Pillow < 13, whose bicubic resampling lands a grey level or a few away on some images (up to 0.11 after
# CLIP normalisation on the bundles). Preprocessing tests are exact under Pillow 13 and bounded by this otherwise.
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
PIXEL_TOLERANCE = 0.0 if PILLOW_13 else 0.12


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vision(**overrides) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                patch_size=4) | overrides


def tiny_text(**overrides) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99,
                max_position_embeddings=12, bos_token_id=96, eos_token_id=97, pad_token_id=0) | overrides


def text_ids(batch: int, length: int, eos: int = 97, vocab: int = 96, lengths=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids ending in eos, with their attention mask."""
    lengths = lengths or [length - i for i in range(batch)]
    ids = torch.zeros(batch, length, dtype=torch.long)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(1, vocab, (n - 1,))
        ids[row, n - 1] = eos
        mask[row, :n] = 1
    return ids, mask
