"""The backend registry: backend name -> Runner class, imported lazily by module path (so this module
imports with numpy alone), with each backend's availability on this host.

It sits below ``quantart_runtime.verify`` (which builds runners by name) and below the package's
``choose_backend`` (which uses the verification): the layering that keeps the backends acyclic.
"""
from __future__ import annotations

import importlib

from ..errors import BackendError
from .base import Runner

BACKENDS = {
    "onnxruntime": ("quantart_runtime.backends.onnxruntime", "OnnxRuntimeRunner"),
    "tensorrt": ("quantart_runtime.backends.tensorrt", "TensorRTRunner"),
    "openvino": ("quantart_runtime.backends.openvino", "OpenVINORunner"),
}
AUTO_ORDER = ("tensorrt", "onnxruntime")


def get_runner_class(name: str) -> type[Runner]:
    """Import the Runner class of backend ``name`` (``BackendError`` if unknown or not importable)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r} cannot be imported here ({exc})") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise BackendError(f"backend {name!r}: {module_name} defines no {class_name}") from None


def availability(name: str) -> tuple[type[Runner] | None, str]:
    """(Runner class, "") when backend ``name`` can run here, else (None, the reason)."""
    try:
        cls = get_runner_class(name)
    except BackendError as exc:
        return None, str(exc)
    try:
        ok, reason = cls.is_available()
    except Exception as exc:  # a broken install must not stop the fallback
        return None, f"{type(exc).__name__}: {exc}"
    return (cls, "") if ok else (None, reason or "not available")


def available_backends() -> dict[str, str]:
    """{backend: ""} for usable backends, {backend: reason} for the others."""
    return {name: availability(name)[1] for name in BACKENDS}


def select_backend(name: str = "auto") -> type[Runner]:
    """The Runner class for ``name`` ("auto" or a key of BACKENDS); ``BackendError`` says why not."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            cls, reason = availability(candidate)
            if cls is not None:
                return cls
            reasons.append(f"{candidate}: {reason}")
        raise BackendError("no usable backend (" + "; ".join(reasons) + ")")
    cls, reason = availability(name)
    if cls is None:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    return cls
