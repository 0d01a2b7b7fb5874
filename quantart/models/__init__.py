from .vqgan import BaseVQGAN
from .style_transfer import StyleTransfer

__all__ = ["BaseVQGAN", "StyleTransfer"]
