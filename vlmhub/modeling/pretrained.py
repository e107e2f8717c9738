"""The base class every vlmhub model derives from: transformers' PreTrainedModel plus our shared init."""

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import cached_file

from .blocks import VisionEmbeddings

HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")


class VlmhubPreTrainedModel(PreTrainedModel):
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["EncoderLayer", "VisionEmbeddings"]
    _skip_keys_device_placement = ["cache"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Also accepts a folder or Hub id in transformers' own format for the family (model_type `llava`, `clip`,
        ...): it is converted in memory with the `transformers` conversion tables, honouring dtype and device_map."""
        if pretrained_model_name_or_path is not None and "config" not in kwargs and not model_args:
            model_type = _saved_model_type(pretrained_model_name_or_path, kwargs)
            if model_type is not None and not model_type.startswith("vlmhub_"):
                # Lazy import, the one exception to "modeling never imports conversion": vlmhub.hub uses the conversion
                # tables. Remote-code copies of this file replace it by an ImportError (they load our format only).
                from ..hub import from_transformers_format

                return from_transformers_format(cls, pretrained_model_name_or_path, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save_pretrained, plus a model card (README.md) that describes the model and its provenance."""
        super().save_pretrained(save_directory, *args, **kwargs)
        try:
            from ..hub import write_model_card  # lazy: vlmhub.hub uses conversion; absent from remote-code copies
        except ImportError:
            return
        if kwargs.get("is_main_process", True):
            write_model_card(self, save_directory)

    def push_to_hub(self, repo_id, **kwargs):
        """transformers' push_to_hub would replace our README.md with its generic card: upload ours instead."""
        try:
            from ..hub import push_to_hub  # lazy: see save_pretrained
        except ImportError:
            return super().push_to_hub(repo_id, **kwargs)
        return push_to_hub(self, repo_id, **kwargs)

    def post_init(self):
        super().post_init()
        self._share_attn_implementation(self.config._attn_implementation, only_unset=True)

    def set_attn_implementation(self, attn_implementation, **kwargs):
        if isinstance(attn_implementation, str):
            # Sub-configs first: our towers are plain modules, so transformers would otherwise set them "in the dark".
            checked = self._check_and_adjust_attn_implementation(attn_implementation, is_init_check=False)
            self._share_attn_implementation(checked)
        super().set_attn_implementation(attn_implementation, **kwargs)

    def _share_attn_implementation(self, implementation, only_unset=False):
        """Our vision/text towers read their sub-config's kernel choice: give them the model's."""
        for key in self.config.sub_configs:
            sub = getattr(self.config, key, None)
            if sub is not None and not (only_unset and sub._attn_implementation):
                sub._attn_implementation_internal = implementation

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)  # Linear/Conv/Embedding ~ N(0, initializer_range), norms at identity
        if isinstance(module, VisionEmbeddings):
            D = module.class_embedding.shape[-1]
            init.normal_(module.class_embedding, std=D**-0.5)
            init.normal_(module.position_embedding, std=self._init_std())

    def _init_std(self) -> float:
        config = self.config.vision_config if "vision_config" in self.config.sub_configs else self.config
        return config.initializer_range


def _saved_model_type(name, kwargs: dict) -> str | None:
    """The model_type in the config.json of a folder or Hub repo; None when it has none."""
    hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
    try:
        path = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False, **hub)
    except OSError:  # unreachable or not a repo: transformers' own loading reports it
        return None
    return json.loads(Path(path).read_text()).get("model_type") if path else None
