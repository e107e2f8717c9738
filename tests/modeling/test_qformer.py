"""The Q-Former connector and the three stage-1 attention masks of BLIP-2."""

import pytest
import torch

from vlmhub.configuration.blip2 import VlmhubQFormerConfig
from vlmhub.modeling.connectors.qformer import QFormer, stage1_attention_mask

Q, T = 3, 4


def config(**kw):
    return VlmhubQFormerConfig(**(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                       vocab_size=50, max_position_embeddings=16, num_query_tokens=Q,
                                       encoder_hidden_size=24, use_text_input=True, cross_attention_frequency=2) | kw))


def qformer(**kw):
    model = QFormer(config(**kw)).eval()
    with torch.no_grad():
        model.query_tokens.normal_()
    return model


TEXT_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])


def expected(kind: str, row: int) -> torch.Tensor:
    """The paper's rule, written out position by position: may position i attend to position j?"""
    L = Q + T
    real = [True] * Q + TEXT_MASK[row].bool().tolist()
    out = torch.zeros(L, L, dtype=torch.bool)
    for i in range(L):
        for j in range(L):
            qi, qj = i < Q, j < Q
            if kind == "itc":  # unimodal: queries with queries, text with text
                ok = qi == qj
            elif kind == "itm":  # bidirectional
                ok = True
            else:  # itg: queries see queries only; text sees the queries and earlier (or the same) text
                ok = qj if qi else (qj or j <= i)
            out[i, j] = ok and real[j]
    return out


@pytest.mark.parametrize("kind", ["itc", "itm", "itg"])
def test_mask_blocks_exactly_what_the_paper_says(kind):
    mask = stage1_attention_mask(kind, Q, TEXT_MASK)
    assert mask.shape == (2, 1, Q + T, Q + T) and mask.dtype == torch.bool
    for row in range(2):
        assert torch.equal(mask[row, 0], expected(kind, row)), kind


def test_mask_specifics():
    itg = stage1_attention_mask("itg", Q, TEXT_MASK)[0, 0]
    assert not itg[:Q, Q:].any()  # no query sees any text
    assert itg[Q:, :Q].all()  # every text token sees every query
    assert not itg[Q, Q + 1] and itg[Q + 1, Q]  # causal among the text
    itc = stage1_attention_mask("itc", Q, TEXT_MASK)[0, 0]
    assert not itc[:Q, Q:].any() and not itc[Q:, :Q].any()
    with pytest.raises(ValueError, match="kind"):
        stage1_attention_mask("mlm", Q, TEXT_MASK)


def test_itc_pass_equals_two_unimodal_passes():
    model = qformer()
    image, ids = torch.randn(2, 5, 24), torch.randint(5, 50, (2, T))
    joint = model.encode(image, input_ids=ids, self_attention_mask=stage1_attention_mask("itc", Q, TEXT_MASK)).last_hidden_state
    queries = model(image)
    text = model.encode(input_ids=ids, attention_mask=TEXT_MASK).last_hidden_state
    torch.testing.assert_close(joint[:, :Q], queries, atol=1e-5, rtol=1e-5)
    real = TEXT_MASK.bool()
    torch.testing.assert_close(joint[:, Q:][real], text[real], atol=1e-5, rtol=1e-5)


def test_itg_queries_ignore_text_and_text_is_causal():
    model = qformer()
    image, ids = torch.randn(2, 5, 24), torch.randint(5, 50, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    itg = stage1_attention_mask("itg", Q, mask)
    out = model.encode(image, input_ids=ids, self_attention_mask=itg).last_hidden_state
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 50
    out2 = model.encode(image, input_ids=changed, self_attention_mask=itg).last_hidden_state
    torch.testing.assert_close(out[:, :Q], model(image), atol=1e-5, rtol=1e-5)  # queries never see text
    torch.testing.assert_close(out[:, :-1], out2[:, :-1], atol=1e-6, rtol=1e-6)  # the future does not leak back
    assert not torch.allclose(out[:, -1], out2[:, -1])


def test_connector_interface_and_cross_attention_placement():
    model = qformer(num_hidden_layers=4, cross_attention_layers=[1, 3], use_text_input=False)
    assert [layer.cross_attn is not None for layer in model.layers] == [False, True, False, True]
    assert model(torch.randn(2, 7, 24)).shape == (2, Q, 32)
    keys = model.state_dict().keys()
    assert not any(k.startswith(("word_embeddings", "position_embeddings")) or ".mlp." in k for k in keys)
    with pytest.raises(ValueError, match="use_text_input"):
        model.encode(torch.randn(2, 7, 24), input_ids=torch.ones(2, 3, dtype=torch.long))
    assert config(num_hidden_layers=6, cross_attention_frequency=2).cross_attention_layers == [0, 2, 4]
    with pytest.raises(ValueError, match="outside"):
        config(cross_attention_layers=[5])


def test_image_padding_mask_hides_features():
    model = qformer()
    image = torch.randn(1, 6, 24)
    keep = torch.tensor([[1, 1, 1, 1, 0, 0]])
    noisy = image.clone()
    noisy[:, 4:] = torch.randn(1, 2, 24)
    torch.testing.assert_close(model(image, keep), model(noisy, keep))
    torch.testing.assert_close(model(image, keep), model(image[:, :4]), atol=1e-5, rtol=1e-5)
