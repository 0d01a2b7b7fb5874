"""quantart_export: QuantArt checkpoints → verified ONNX model directories (docs/model_format.md).

Public names load lazily, so importing this package does not import torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "export_model": "quantart_export.pipeline",
    "ExportError": "quantart_export.errors",
    "VerificationError": "quantart_export.errors",
    "nearest_code": "quantart_export.nearest",  # the module is not named nearest_code: an imported
    # submodule would replace the function on the package
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantart_export' has no attribute {name!r}")
