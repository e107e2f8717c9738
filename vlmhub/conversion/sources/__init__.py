"""One module per released checkpoint format; each exposes convert(input_path, **options) -> (model, processor)."""

from . import lavis_blip2, llama_vision, llava, minigpt4, mplug_owl, open_flamingo, openai_clip, timm_vit, transformers

SOURCES = {
    "transformers": transformers,
    "openai-clip": openai_clip,
    "timm-vit": timm_vit,
    "llava": llava,
    "mplug-owl": mplug_owl,
    "lavis-blip2": lavis_blip2,
    "minigpt4": minigpt4,
    "llama-vision": llama_vision,
    "open-flamingo": open_flamingo,
}
