"""transformers 5.24 renamed the generation cache `past_key_values` -> `cache`, in forward arguments and outputs. Every
generative family takes `cache` and returns it as `cache`, and still takes the old name (with transformers'
FutureWarning), giving the same numbers."""

import pytest
import torch
from transformers import DynamicCache

from tests.conversion import test_blip_conversion as blip
from tests.modeling.test_static_cache import CASES

GENERATE_ONLY = ("pad_token_id",)


def blip_case(tmp_path):
    blip.register()
    model = blip.converted(blip.transformers.BlipForConditionalGeneration(blip.hf_config()), tmp_path,
                           blip.transformers.AutoModelForImageTextToText)
    return model, dict(pixel_values=torch.randn(2, 3, 16, 16), input_ids=blip.captions()[0])


def forward_inputs(name, tmp_path):
    model, inputs = blip_case(tmp_path) if name == "blip" else CASES[name]()
    return model, {k: v for k, v in inputs.items() if k not in GENERATE_ONLY}


@pytest.mark.parametrize("name", [*CASES, "blip"])
def test_cache_is_taken_and_returned_under_its_new_name_and_the_old_one_still_works(name, tmp_path):
    torch.manual_seed(0)
    model, inputs = forward_inputs(name, tmp_path)
    with torch.no_grad():
        new = model(**inputs, cache=DynamicCache(), use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            old = model(**inputs, past_key_values=DynamicCache(), use_cache=True)
    assert "cache" in new.keys() and "past_key_values" not in new.keys()
    assert torch.equal(new.logits, old.logits)
    assert new.cache.get_seq_length() == old.cache.get_seq_length() == inputs["input_ids"].shape[1]
    for a, b in zip(new.cache.layers, old.cache.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
