"""torch.compile of the shared vision tower, and of every generative family's decode step on a static cache (what
transformers compiles when it generates on an accelerator): one graph each (fullgraph=True, no graph breaks) that
matches eager.

The default inductor backend compiles C++ kernels for this CPU: about 50 s on a cold cache on the 2-core machine,
about 3 s once its kernel cache (/tmp/torchinductor_$USER) is warm. VLMHUB_COMPILE_BACKEND=aot_eager traces the same
graph without code generation (about 1 s) where no C++ compiler is at hand.
"""

import os

import pytest
import torch

from tests.modeling.test_static_cache import CASES
from vlmhub.configuration.clip import VlmhubCLIPVisionConfig
from vlmhub.modeling.blip2 import ImageSoftPromptModel
from vlmhub.modeling.blocks.vit import VisionTransformer

BACKEND = os.environ.get("VLMHUB_COMPILE_BACKEND", "inductor")


@pytest.fixture
def tower():
    config = VlmhubCLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=16, patch_size=4)
    config._attn_implementation = "sdpa"  # what VlmhubPreTrainedModel sets on a tower inside a model
    torch._dynamo.reset()
    yield VisionTransformer(config).eval()
    torch._dynamo.reset()


def test_vision_tower_has_no_graph_breaks(tower):
    explanation = torch._dynamo.explain(tower)(torch.randn(2, 3, 16, 16))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_vision_tower_matches_eager(tower):
    pixels = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(tower, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        expected, got = tower(pixels), compiled(pixels)
    assert got.last_hidden_state.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)


def decoder(model):
    """The module whose forward generate runs: BLIP-2 and MiniGPT-4 decode on the bare language model, as
    transformers' BLIP-2 does; the other families on their own forward."""
    return model.language_model if isinstance(model, ImageSoftPromptModel) else model


def generate_calls(model, inputs) -> list[dict]:
    """The keyword arguments generate passes to `decoder(model)`'s forward: prefill, then decode steps (on a static
    cache)."""
    calls = []
    hook = decoder(model).register_forward_pre_hook(lambda module, args, kwargs: calls.append(dict(kwargs)),
                                                    with_kwargs=True)
    try:
        model.generate(**inputs, max_new_tokens=2, do_sample=False, cache_implementation="static")
    finally:
        hook.remove()
    return calls


@pytest.mark.parametrize("name", CASES)
def test_decode_step_compiles_to_one_graph_that_matches_eager(name):
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    prefill, step = generate_calls(model, inputs)[:2]
    model = decoder(model)
    cache = prefill["cache"]

    def decode(forward):
        cache.reset()
        with torch.no_grad():
            model(**prefill)
            return forward(**step).logits

    expected = decode(model)
    torch._dynamo.reset()
    got = decode(torch.compile(model, fullgraph=True, backend="eager"))  # tracing is the test: a break raises
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
