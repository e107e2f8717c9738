"""Generation with transformers' fixed-size cache (cache_implementation="static") gives the tokens of the default
dynamic cache in every generative family; where transformers has no static cache either (BLIP), a clear error."""

import pytest
import torch
import transformers
from transformers import DynamicCache, StaticCache

from tests.conversion import test_blip_conversion as blip
from tests.conversion.test_minigpt4_conversion import register as register_minigpt4
from tests.modeling import test_blip2 as blip2
from tests.modeling import test_flamingo as flamingo
from tests.modeling import test_llava as llava
from tests.modeling import test_minigpt4 as minigpt4
from tests.modeling import test_mllama as mllama
from tests.modeling import test_mplug_owl as mplug_owl
from vlmhub.modeling.blocks.attention import MediaCacheLayer


def llava_case():
    return llava.model(), dict(input_ids=llava.prompt(16), pixel_values=torch.randn(1, 3, 28, 28), pad_token_id=0)


def minigpt4_case(use_qformer):
    register_minigpt4()
    model = minigpt4.model_for(use_qformer)
    return model, minigpt4.batch(model)


def mplug_owl_case():
    ids = mplug_owl.prompt(images_per_row=2)
    return mplug_owl.model(), dict(input_ids=ids, pixel_values=torch.randn(2, 3, 28, 28), pad_token_id=0)


CASES = {
    "llava": llava_case,
    "blip2-opt": lambda: (blip2.generative("opt"), blip2.batch()),
    "blip2-llama": lambda: (blip2.generative("llama"), blip2.batch()),
    "minigpt4-qformer": lambda: minigpt4_case(True),
    "minigpt4-merged-patches": lambda: minigpt4_case(False),
    "mplug-owl": mplug_owl_case,
    "mllama": lambda: (mllama.tiny_model().eval(), mllama.full_inputs()),  # image keys/values in extra cache slots
    "flamingo": lambda: (flamingo.tiny_model().eval(), flamingo.interleaved()),
}


@pytest.mark.parametrize("name", CASES)
def test_static_cache_generation_gives_the_dynamic_cache_tokens(name):
    torch.manual_seed(0)
    model, inputs = CASES[name]()
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    dynamic = model.generate(**inputs, **kwargs)
    static = model.generate(**inputs, cache_implementation="static", **kwargs)
    assert torch.equal(static, dynamic)


def test_media_slots_keep_a_static_cache_static_and_a_reset_empties_them():
    torch.manual_seed(0)
    model, inputs = mllama.tiny_model().eval(), mllama.full_inputs()
    for cache, compileable in ((StaticCache(config=model.config.text_config, max_cache_len=32), True),
                               (DynamicCache(config=model.config.text_config), False)):
        with torch.no_grad():
            model(**inputs, cache=cache, use_cache=True)
        media = [layer for layer in cache.layers if isinstance(layer, MediaCacheLayer)]
        assert len(media) == len(model.config.cross_attention_layers)
        # transformers decodes without a mask only when some layer is dynamic; a static one's empty slots need it
        assert cache.is_compileable == compileable
        cache.reset()
        assert all(layer.keys is None and not layer.is_initialized for layer in media)  # the next prefill's own


def test_blip_refuses_a_fixed_size_cache_clearly(tmp_path):
    blip.register()
    hf = transformers.BlipForConditionalGeneration(blip.hf_config())
    model = blip.converted(hf, tmp_path, transformers.AutoModelForImageTextToText)
    size = hf.config.vision_config.image_size
    with pytest.raises(ValueError, match="static.* not supported"):
        model.generate(pixel_values=torch.randn(1, 3, size, size), max_new_tokens=3, cache_implementation="static")
