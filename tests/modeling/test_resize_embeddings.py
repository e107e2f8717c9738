"""`resize_token_embeddings` after adding tokens, as transformers users do before fine-tuning: every generative family
keeps its outputs on the old ids, embeds and predicts the new ones, and saves and reloads the resized model."""

import pytest
import torch
from transformers import AutoModelForImageTextToText

from tests.modeling.test_static_cache import CASES


def forward_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k != "pad_token_id"}


@pytest.mark.parametrize("name", CASES)
def test_resized_model_keeps_old_ids_and_learns_new_ones(name, tmp_path):
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    x = forward_inputs(inputs)
    with torch.no_grad():
        before = model(**x).logits
    old = before.shape[-1]
    model.resize_token_embeddings(old + 8)
    assert model.get_output_embeddings().weight.shape[0] == old + 8
    assert model.config.get_text_config(decoder=True).vocab_size == old + 8
    with torch.no_grad():
        after = model(**x).logits
    assert after.shape[-1] == old + 8
    torch.testing.assert_close(after[..., :old], before, atol=1e-5, rtol=0)  # the image tokens included
    labels = x["input_ids"].clone()
    labels[:, -1] = old + 5  # a new token as a target, then as an input
    assert torch.isfinite(model(**x, labels=labels).loss)
    x["input_ids"][:, -1] = old + 5
    with torch.no_grad():
        expected = model(**x).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**x).logits, expected, atol=0, rtol=0)


def test_mllama_folds_its_learnable_rows_into_the_text_table():
    """transformers' Mllama keeps one input table: vocabulary, then the 8 learnable rows (the image token first),
    then the new ids; ours keeps the learnable rows apart until a resize folds them in, the image token's vector
    unchanged."""
    torch.manual_seed(0)
    model, _ = CASES["mllama"]()
    vocab, image = model.config.text_config.vocab_size, model.config.image_token_index
    learnable = model.learnable_embedding.weight.detach().clone()
    ids = torch.tensor([[1, image, 5]])
    before = model.embed_tokens(ids)
    model.resize_token_embeddings(vocab + 10)
    assert model.config.num_learnable_embeddings == 0 and model.learnable_embedding is None
    table = model.get_input_embeddings().weight
    assert table.shape[0] == vocab + 10 and torch.equal(table[vocab : vocab + len(learnable)], learnable)
    assert torch.equal(model.embed_tokens(ids), before)
