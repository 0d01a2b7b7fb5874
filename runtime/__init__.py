"""quantart_runtime: run exported QuantArt models without torch (ONNX Runtime, TensorRT).

    from quantart_runtime import Stylizer, load_image, save_image
    stylizer = Stylizer.load("exported_model_dir")
    save_image(stylizer.stylize(load_image("photo.jpg"), load_image("style.jpg")), "out.png")
"""
from __future__ import annotations

import importlib

# Public names load lazily (PEP 562), so that importing a submodule such as
# quantart_runtime.kernels.nearest_code needs neither Pillow nor onnxruntime.
_EXPORTS = {
    "BackendError": ".errors", "ImageError": ".errors", "ModelError": ".errors",
    "load_image": ".images", "save_image": ".images",
    "load_manifest": ".manifest",
    "StyleCode": ".stylizer", "Stylizer": ".stylizer",
}


def __getattr__(name: str):
    """Import a public name on first use (``AttributeError`` for unknown names)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quantart_runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


try:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version
    __version__ = _version("quantart")
except (ImportError, PackageNotFoundError):  # running from a source tree without metadata
    __version__ = "0.1.0"

__all__ = ["Stylizer", "StyleCode", "ModelError", "BackendError", "ImageError", "load_image",
           "save_image", "load_manifest", "__version__"]
