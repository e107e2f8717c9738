"""One module per released checkpoint format; each exposes convert(input_path, **options) -> (model, processor)."""

from . import llava, openai_clip, timm_vit, transformers

SOURCES = {
    "transformers": transformers,
    "openai-clip": openai_clip,
    "timm-vit": timm_vit,
    "llava": llava,
}
