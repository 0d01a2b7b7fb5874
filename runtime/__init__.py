"""quantart_runtime: run exported QuantArt models without torch (ONNX Runtime, TensorRT).

    from quantart_runtime import Stylizer, load_image, save_image
    stylizer = Stylizer.load("exported_model_dir")
    save_image(stylizer.stylize(load_image("photo.jpg"), load_image("style.jpg")), "out.png")
"""
from __future__ import annotations

from .errors import BackendError, ImageError, ModelError
from .images import load_image, save_image
from .manifest import load_manifest
from .stylizer import StyleCode, Stylizer

try:
    from importlib.metadata import PackageNotFoundError, version as _version
    __version__ = _version("quantart")
except (ImportError, PackageNotFoundError):  # running from a source tree without metadata
    __version__ = "0.1.0"

__all__ = ["Stylizer", "StyleCode", "ModelError", "BackendError", "ImageError", "load_image",
           "save_image", "load_manifest", "__version__"]
