"""The backend seam: one Runner per backend (Polygraphy style), so a new backend is one file.

Backends are imported lazily by module path, so this package imports with numpy alone:
``onnxruntime`` (embedded default), ``tensorrt`` and ``openvino`` (CPU, FP32/BF16 per graph).

``choose_backend`` is what ``Stylizer.load`` uses: for ``backend="auto"`` without a precision it
picks TensorRT > ONNX Runtime CUDA > OpenVINO with the verified precision plan of this model on this
CPU (``quantart_runtime.verify.plan_for``: verified once, then cached) > ONNX Runtime CPU FP32, and
returns the reason of its choice. ``select_backend`` picks a Runner class without a model
(TensorRT > ONNX Runtime), for callers that bring their own precision.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import BackendError, ModelError
from .base import Runner

BACKENDS = {
    "onnxruntime": ("quantart_runtime.backends.onnxruntime", "OnnxRuntimeRunner"),
    "tensorrt": ("quantart_runtime.backends.tensorrt", "TensorRTRunner"),
    "openvino": ("quantart_runtime.backends.openvino", "OpenVINORunner"),
}
AUTO_ORDER = ("tensorrt", "onnxruntime")

__all__ = ["BACKENDS", "Choice", "Runner", "available_backends", "choose_backend", "get_runner_class",
           "select_backend"]


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


def _availability(name: str) -> tuple[type[Runner] | None, str]:
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
    return {name: _availability(name)[1] for name in BACKENDS}


def select_backend(name: str = "auto") -> type[Runner]:
    """The Runner class for ``name`` ("auto" or a key of BACKENDS); ``BackendError`` says why not."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            cls, reason = _availability(candidate)
            if cls is not None:
                return cls
            reasons.append(f"{candidate}: {reason}")
        raise BackendError("no usable backend (" + "; ".join(reasons) + ")")
    cls, reason = _availability(name)
    if cls is None:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    return cls

_OPENVINO_ONLY = ("capabilities", "cache_dir", "hint", "plan")


@dataclass
class Choice:
    """What ``choose_backend`` picked: backend name, the manifest precision its graphs come from
    (``graph_precision``), the precision label shown to users (``precision``: "fp32", "bf16" or a
    plan such as "decoder bf16, the rest fp32"), runner options (e.g. the plan) and why."""
    backend: str
    graph_precision: str
    precision: str
    options: dict = field(default_factory=dict)
    reason: str = ""


def _ort_cuda(device: int) -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    from .onnxruntime import CUDA, _gpu_visible

    if CUDA not in ort.get_available_providers():
        return False, "no CUDA provider in this onnxruntime"
    if not _gpu_visible(device):
        return False, "no GPU visible"
    return True, ""


def _openvino_plan(model_dir, options: dict) -> tuple[Choice | None, str]:
    cls, reason = _availability("openvino")
    if cls is None:
        return None, f"openvino: {reason}"
    from ..verify import plan_for, plan_label
    from .openvino import cpu_capabilities

    caps = options.get("capabilities")
    caps = [str(c) for c in (caps if caps is not None else cpu_capabilities())]
    if "BF16" not in caps:
        return None, "openvino: this CPU reports no BF16 (OPTIMIZATION_CAPABILITIES), FP32 stays on ONNX Runtime"
    try:
        result = plan_for(model_dir, "openvino", "bf16", **options)
    except ModelError as exc:  # e.g. an export without verification data
        from ..util import one_line

        return None, f"openvino: {one_line(exc)}"
    if all(p == "fp32" for p in result.plan.values()):
        return None, f"openvino: the verified plan keeps every graph fp32 ({result.reason})"
    label = plan_label(result.plan)
    how = "cached plan" if result.cached else "verified now"
    return Choice("openvino", "fp32", label, {**options, "plan": dict(result.plan)},
                  f"openvino on this CPU with the verified plan ({how}: {result.reason})"), ""


def choose_backend(model_dir, backend: str = "auto", precision: str | None = None, device: int = 0,
                   **options) -> Choice:
    """Pick backend and precision for a model (see the module docstring); ``BackendError`` says why not.

    Args:
        model_dir: the exported model directory (its verified plan is looked up for OpenVINO).
        backend: "auto" or a key of BACKENDS.
        precision: None (auto: the fastest verified), "fp32", "fp16", "bf16" or "int8" (OpenVINO;
            int8 only where the model directory holds export-verified INT8 IR, never chosen by auto).
        device: GPU ordinal. options: runner options (``capabilities`` also steers the BF16 check).
    Returns:
        a ``Choice`` with the reason.
    """
    if backend != "auto":
        select_backend(backend)
        if precision in ("bf16", "int8") and backend != "openvino":
            raise BackendError(f"precision {precision} runs on the openvino backend, not {backend}")
        graph_precision = "fp32" if precision in (None, "bf16") else precision
        label = precision or "fp32"
        opts = dict(options)
        if backend == "openvino" and precision == "bf16":
            opts["plan"] = {g: "bf16" for g in ("content_encoder", "style_encoder", "sga", "decoder")}
        return Choice(backend, graph_precision, label, opts, f"backend {backend} asked for")
    if precision == "bf16":
        select_backend("openvino")
        plan = {g: "bf16" for g in ("content_encoder", "style_encoder", "sga", "decoder")}
        return Choice("openvino", "fp32", "bf16", {**options, "plan": plan},
                      "precision bf16 asked for: openvino with every graph bf16 (not verified)")
    if precision == "int8":
        select_backend("openvino")
        return Choice("openvino", "int8", "int8", dict(options),
                      "precision int8 asked for: openvino with the model's export-verified INT8 graphs")
    if precision is not None:
        cls = select_backend("auto")
        return Choice(cls.name, precision, precision, dict(options),
                      f"precision {precision} asked for: {cls.name} (TensorRT > ONNX Runtime)")
    reasons = []
    plain = {k: v for k, v in options.items() if k not in _OPENVINO_ONLY}
    cls, reason = _availability("tensorrt")
    if cls is not None:
        return Choice("tensorrt", "fp32", "fp32", plain, "TensorRT and a GPU are available")
    reasons.append(f"tensorrt: {reason}")
    ok, reason = _ort_cuda(device)
    if ok:
        return Choice("onnxruntime", "fp32", "fp32", plain,
                      "ONNX Runtime CUDA (no TensorRT: " + reasons[0] + ")")
    reasons.append(f"onnxruntime CUDA: {reason}")
    ov_options = {k: v for k, v in options.items() if k in _OPENVINO_ONLY}
    choice, reason = _openvino_plan(model_dir, ov_options)
    if choice is not None:
        return choice
    reasons.append(reason)
    select_backend("onnxruntime")
    return Choice("onnxruntime", "fp32", "fp32", plain,
                  "ONNX Runtime CPU FP32 (" + "; ".join(reasons) + ")")
