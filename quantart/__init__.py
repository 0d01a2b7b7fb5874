"""QuantArt in PyTorch: faithful Stage 1 (BaseVQGAN) and Stage 2 (StyleTransfer) models.

Public names load lazily, so light tools (the CLI) can import this package without torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "BaseVQGAN": "quantart.models.vqgan",
    "StyleTransfer": "quantart.models.style_transfer",
    "load_model": "quantart.checkpoint",
    "save_model": "quantart.checkpoint",
    "CheckpointError": "quantart.checkpoint",
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantart' has no attribute {name!r}")
