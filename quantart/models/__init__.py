"""The two QuantArt models and their config layer (see quantart.models.config)."""
from .build import MODEL_CLASSES, build_model, check_config
from .config import ArchitectureError, official_config
from .style_transfer import StyleTransfer
from .vqgan import BaseVQGAN

__all__ = ["MODEL_CLASSES", "ArchitectureError", "BaseVQGAN", "StyleTransfer", "build_model", "check_config",
           "official_config"]
