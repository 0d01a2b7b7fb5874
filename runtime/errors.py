"""The runtime's error types: each carries a one-line reason fit for a CLI message."""
from __future__ import annotations


class ModelError(RuntimeError):
    """The model directory cannot be used: missing/invalid manifest, missing graph, sha256 mismatch,
    unsupported format version or kind, or no usable backend for it."""


class BackendError(ModelError):
    """The requested backend is unknown or cannot run here (reason in the message)."""


class ImageError(ValueError):
    """An input image cannot be used: unreadable, truncated, empty, not an image, above Pillow's
    decompression-bomb limit, smaller than one latent cell, or not an HxWx3 uint8 array."""


class ImageTooLarge(ImageError):
    """An image whose request would not fit the memory budget (``quantart_runtime.memory``) and that
    may not be downscaled; the service answers 413."""
