"""vlmhub: vision-language models that plug into Hugging Face transformers.

`import vlmhub` registers every family with the transformers Auto classes under our own model types
(`vlmhub_<family>`), so `AutoModel.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` work on
anything vlmhub saved or converted.

Class names carry a `Vlmhub` prefix (`VlmhubCLIPModel`): transformers resolves configs, image processors and
processors by class *name*, so reusing its names would make `import vlmhub` hijack transformers' own
checkpoints. For drop-in use the transformers-style names are exported as aliases (`vlmhub.CLIPModel`).
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

from .configuration import VisionTowerConfig, VlmhubCLIPConfig, VlmhubCLIPTextConfig, VlmhubCLIPVisionConfig, VlmhubViTConfig
from .configuration.blip import VlmhubBlipConfig
from .configuration.blip2 import VlmhubBlip2Config, VlmhubBlip2Stage1Config
from .configuration.flamingo import VlmhubFlamingoConfig
from .configuration.llava import VlmhubLlavaConfig
from .configuration.minigpt4 import VlmhubMiniGPT4Config
from .configuration.mllama import VlmhubMllamaConfig, VlmhubMllamaVisionConfig
from .configuration.mplug_owl import VlmhubMplugOwlConfig
from .modeling import (
    VlmhubCLIPModel,
    VlmhubCLIPTextModel,
    VlmhubCLIPVisionModel,
    VlmhubViTForImageClassification,
    VlmhubViTModel,
)
from .modeling.blip import VlmhubBlipForConditionalGeneration, VlmhubBlipForImageTextRetrieval
from .modeling.blip2 import VlmhubBlip2ForConditionalGeneration, VlmhubBlip2ForImageTextRetrieval
from .modeling.flamingo import VlmhubFlamingoForConditionalGeneration
from .modeling.llava import VlmhubLlavaForConditionalGeneration
from .modeling.minigpt4 import VlmhubMiniGPT4ForConditionalGeneration
from .modeling.mllama import VlmhubMllamaForConditionalGeneration, VlmhubMllamaVisionModel
from .modeling.mplug_owl import VlmhubMplugOwlForConditionalGeneration
from .processing.clip import VlmhubCLIPImageProcessor, VlmhubCLIPProcessor
from .processing.blip import VlmhubBlipImageProcessor, VlmhubBlipProcessor
from .processing.blip2 import VlmhubBlip2ImageProcessor, VlmhubBlip2Processor
from .processing.flamingo import VlmhubFlamingoImageProcessor, VlmhubFlamingoProcessor
from .processing.llava import VlmhubLlavaImageProcessor, VlmhubLlavaProcessor
from .processing.minigpt4 import VlmhubMiniGPT4ImageProcessor, VlmhubMiniGPT4Processor
from .processing.mllama import VlmhubMllamaImageProcessor, VlmhubMllamaProcessor
from .processing.mplug_owl import VlmhubMplugOwlImageProcessor, VlmhubMplugOwlProcessor
from .processing.tokenization import build_clip_tokenizer
from .processing.vit import VlmhubViTImageProcessor
from . import hub
from .defaults import load_default
from .conversion import convert
from .hub import export_remote_code
from .tasks import zero_shot_classify

__version__ = "0.1.0"

# One row per model type: (config, AutoModel class, {task Auto class: model class}, image processor, processor).
FAMILIES = [
    (VlmhubViTConfig, VlmhubViTModel, {AutoModelForImageClassification: VlmhubViTForImageClassification},
     VlmhubViTImageProcessor, None),
    (VlmhubCLIPConfig, VlmhubCLIPModel, {AutoModelForZeroShotImageClassification: VlmhubCLIPModel},
     VlmhubCLIPImageProcessor, VlmhubCLIPProcessor),
    (VlmhubCLIPVisionConfig, VlmhubCLIPVisionModel, {}, VlmhubCLIPImageProcessor, None),
    (VlmhubCLIPTextConfig, VlmhubCLIPTextModel, {}, None, None),
    (VlmhubLlavaConfig, VlmhubLlavaForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubLlavaForConditionalGeneration}, VlmhubLlavaImageProcessor, VlmhubLlavaProcessor),
    (VlmhubFlamingoConfig, VlmhubFlamingoForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubFlamingoForConditionalGeneration}, VlmhubFlamingoImageProcessor, VlmhubFlamingoProcessor),
    (VlmhubMllamaConfig, VlmhubMllamaForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubMllamaForConditionalGeneration}, VlmhubMllamaImageProcessor, VlmhubMllamaProcessor),
    (VlmhubMllamaVisionConfig, VlmhubMllamaVisionModel, {}, VlmhubMllamaImageProcessor, None),
    (VlmhubMplugOwlConfig, VlmhubMplugOwlForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubMplugOwlForConditionalGeneration}, VlmhubMplugOwlImageProcessor, VlmhubMplugOwlProcessor),
    (VlmhubBlip2Config, VlmhubBlip2ForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubBlip2ForConditionalGeneration}, VlmhubBlip2ImageProcessor, VlmhubBlip2Processor),
    (VlmhubBlip2Stage1Config, VlmhubBlip2ForImageTextRetrieval, {}, VlmhubBlip2ImageProcessor, None),
    (VlmhubMiniGPT4Config, VlmhubMiniGPT4ForConditionalGeneration,
     {AutoModelForImageTextToText: VlmhubMiniGPT4ForConditionalGeneration}, VlmhubMiniGPT4ImageProcessor, VlmhubMiniGPT4Processor),
    (VlmhubBlipConfig, VlmhubBlipForImageTextRetrieval,
     {AutoModelForImageTextToText: VlmhubBlipForConditionalGeneration}, VlmhubBlipImageProcessor, VlmhubBlipProcessor),
]


def _register():
    for config, model, tasks, image_processor, processor in FAMILIES:
        AutoConfig.register(config.model_type, config, exist_ok=True)  # exist_ok: re-imports (importlib.reload)
        AutoModel.register(config, model, exist_ok=True)
        for auto_class, task_model in tasks.items():
            auto_class.register(config, task_model, exist_ok=True)
        if image_processor is not None:
            # Ours needs no torchvision, so it serves both backends.
            backends = {"pil": image_processor, "torchvision": image_processor}
            AutoImageProcessor.register(config, image_processor_classes=backends, exist_ok=True)
        if processor is not None:
            AutoProcessor.register(config, processor, exist_ok=True)


_register()

# transformers-style names, for drop-in use: `from vlmhub import CLIPModel`.
ViTConfig, ViTModel, ViTForImageClassification = VlmhubViTConfig, VlmhubViTModel, VlmhubViTForImageClassification
CLIPConfig, CLIPTextConfig, CLIPVisionConfig = VlmhubCLIPConfig, VlmhubCLIPTextConfig, VlmhubCLIPVisionConfig
CLIPModel, CLIPTextModel, CLIPVisionModel = VlmhubCLIPModel, VlmhubCLIPTextModel, VlmhubCLIPVisionModel
ViTImageProcessor, CLIPImageProcessor, CLIPProcessor = VlmhubViTImageProcessor, VlmhubCLIPImageProcessor, VlmhubCLIPProcessor
LlavaConfig, LlavaForConditionalGeneration = VlmhubLlavaConfig, VlmhubLlavaForConditionalGeneration
LlavaImageProcessor, LlavaProcessor = VlmhubLlavaImageProcessor, VlmhubLlavaProcessor
MllamaConfig, MllamaForConditionalGeneration = VlmhubMllamaConfig, VlmhubMllamaForConditionalGeneration
MllamaImageProcessor, MllamaProcessor = VlmhubMllamaImageProcessor, VlmhubMllamaProcessor

__all__ = [
    "CLIPConfig",
    "CLIPImageProcessor",
    "CLIPModel",
    "CLIPProcessor",
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPVisionConfig",
    "CLIPVisionModel",
    "VisionTowerConfig",
    "ViTConfig",
    "ViTForImageClassification",
    "ViTImageProcessor",
    "ViTModel",
    "LlavaConfig",
    "LlavaForConditionalGeneration",
    "LlavaImageProcessor",
    "LlavaProcessor",
    "VlmhubFlamingoConfig",
    "VlmhubFlamingoForConditionalGeneration",
    "VlmhubFlamingoImageProcessor",
    "VlmhubFlamingoProcessor",
    "VlmhubLlavaConfig",
    "VlmhubLlavaForConditionalGeneration",
    "VlmhubLlavaImageProcessor",
    "VlmhubLlavaProcessor",
    "VlmhubBlip2Config",
    "VlmhubBlip2ForConditionalGeneration",
    "VlmhubBlip2ForImageTextRetrieval",
    "VlmhubBlip2ImageProcessor",
    "VlmhubBlip2Processor",
    "VlmhubBlip2Stage1Config",
    "VlmhubBlipConfig",
    "VlmhubBlipForConditionalGeneration",
    "VlmhubBlipForImageTextRetrieval",
    "VlmhubBlipImageProcessor",
    "VlmhubBlipProcessor",
    "VlmhubMiniGPT4Config",
    "VlmhubMiniGPT4ForConditionalGeneration",
    "VlmhubMiniGPT4ImageProcessor",
    "VlmhubMiniGPT4Processor",
    "MllamaConfig",
    "MllamaForConditionalGeneration",
    "MllamaImageProcessor",
    "MllamaProcessor",
    "VlmhubMllamaConfig",
    "VlmhubMllamaForConditionalGeneration",
    "VlmhubMllamaImageProcessor",
    "VlmhubMllamaProcessor",
    "VlmhubMllamaVisionConfig",
    "VlmhubMllamaVisionModel",
    "VlmhubMplugOwlConfig",
    "VlmhubMplugOwlForConditionalGeneration",
    "VlmhubMplugOwlImageProcessor",
    "VlmhubMplugOwlProcessor",
    "VlmhubCLIPConfig",
    "VlmhubCLIPImageProcessor",
    "VlmhubCLIPModel",
    "VlmhubCLIPProcessor",
    "VlmhubCLIPTextConfig",
    "VlmhubCLIPTextModel",
    "VlmhubCLIPVisionConfig",
    "VlmhubCLIPVisionModel",
    "VlmhubViTConfig",
    "VlmhubViTForImageClassification",
    "VlmhubViTImageProcessor",
    "VlmhubViTModel",
    "build_clip_tokenizer",
    "convert",
    "export_remote_code",
    "hub",
    "load_default",
    "zero_shot_classify",
]
