"""torch.compile of the shared vision tower: one graph (fullgraph=True, no graph breaks) that matches eager.

The default inductor backend compiles C++ kernels for this CPU: about 50 s on a cold cache on the 2-core machine,
about 3 s once its kernel cache (/tmp/torchinductor_$USER) is warm. VLMHUB_COMPILE_BACKEND=aot_eager traces the same
graph without code generation (about 1 s) where no C++ compiler is at hand.
"""

import os

import pytest
import torch

from vlmhub.configuration.clip import VlmhubCLIPVisionConfig
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
