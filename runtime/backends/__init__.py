"""The backend seam: one Runner per backend (Polygraphy style), so a new backend is one file.

Backends are imported lazily by module path (``registry``), so this package imports with numpy alone:
``onnxruntime`` (embedded default), ``tensorrt`` and ``openvino`` (CPU, FP32/BF16 per graph).

``choose_backend`` is what ``Stylizer.load`` uses. For ``backend="auto"`` without a precision: on a GPU
TensorRT > ONNX Runtime CUDA; on a CPU the *fastest verified candidate*: ``cpu_candidates`` lists the
ways to run this model that verification passed on this host (ONNX Runtime FP32; OpenVINO with the
verified precision plan of this model on this CPU, ``quantart_runtime.verify.plan_for``), and
``quantart_runtime.timing.measure`` times each on the stored verification inputs at the serving size
(first use only; cached per model, CPU and backend versions). The reason of the choice names every
timing. ``select_backend`` picks a Runner class without a model (TensorRT > ONNX Runtime), for callers
that bring their own precision.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BackendError, ModelError
from .base import Runner
from .registry import AUTO_ORDER, BACKENDS, availability, available_backends, get_runner_class, select_backend

__all__ = ["BACKENDS", "AUTO_ORDER", "Choice", "Runner", "available_backends", "choose_backend", "cpu_candidates",
           "get_runner_class", "select_backend"]

_OPENVINO_ONLY = ("capabilities", "cache_dir", "hint", "plan")


@dataclass
class Choice:
    """What ``choose_backend`` picked: backend name, the manifest precision its graphs come from
    (``graph_precision``), the precision label shown to users (``precision``: "fp32", "bf16" or a
    plan such as "decoder bf16, the rest fp32"), runner options (e.g. the plan) and why; for a
    measured auto choice, ``timings``: the timed candidates (``quantart_runtime.timing.Candidate``,
    fastest first) and ``timed_size``: the size ("HxW") they were timed at."""
    backend: str
    graph_precision: str
    precision: str
    options: dict = field(default_factory=dict)
    reason: str = ""
    timings: list = field(default_factory=list)
    timed_size: str = ""


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


def _openvino_plan(model_dir, options: dict):
    """(the OpenVINO candidate with this model's verified BF16 plan, "") or (None, why there is none)."""
    cls, reason = availability("openvino")
    if cls is None:
        return None, f"openvino: {reason}"
    from .openvino import cpu_capabilities

    caps = options.get("capabilities")
    caps = [str(c) for c in (caps if caps is not None else cpu_capabilities())]
    if "BF16" not in caps:
        return None, "openvino: this CPU reports no BF16 (OPTIMIZATION_CAPABILITIES), FP32 stays on ONNX Runtime"
    return _verified_plan_candidate(model_dir, "bf16", "openvino", "the verified plan", options)


def _verified_plan_candidate(model_dir, precision: str, tag: str, what: str, options: dict):
    """(the OpenVINO candidate of ``plan_for(model_dir, "openvino", precision)``, "") or (None, why not)."""
    from ..timing import Candidate
    from ..util import one_line
    from ..verify import plan_for, plan_label

    try:
        result = plan_for(model_dir, "openvino", precision, **options)
    except (ModelError, BackendError) as exc:  # e.g. an export without verification data
        return None, f"{tag}: {one_line(exc)}"
    if all(p == "fp32" for p in result.plan.values()):
        return None, f"{tag}: the verified plan keeps every graph fp32 ({result.reason})"
    how = "cached plan" if result.cached else "verified now"
    return Candidate("openvino", "fp32", plan_label(result.plan), {**options, "plan": dict(result.plan)},
                     f"openvino with {what} ({how}: {result.reason})"), ""


def cpu_candidates(model_dir, options: dict) -> tuple[list, list[str]]:
    """The verified ways to run ``model_dir`` on this CPU, as ``quantart_runtime.timing.Candidate`` s
    (ONNX Runtime FP32 first: it wins a tie), and why others are not candidates.

    A new precision (another backend or plan) is one more entry here; ``choose_backend`` times them all.
    ``options``: runner options (the OpenVINO-only ones, ``capabilities`` included, go to OpenVINO).
    """
    from ..timing import Candidate

    plain = {k: v for k, v in options.items() if k not in _OPENVINO_ONLY}
    ov_options = {k: v for k, v in options.items() if k in _OPENVINO_ONLY}
    candidates, reasons = [], []
    if availability("onnxruntime")[0] is not None:
        candidates.append(Candidate("onnxruntime", "fp32", "fp32", plain, "ONNX Runtime CPU FP32 (the reference)"))
    for candidate, reason in (_openvino_plan(model_dir, ov_options), _openvino_int8_plan(model_dir, ov_options)):
        if candidate is not None:
            candidates.append(candidate)
        elif reason:
            reasons.append(reason)
    return candidates, reasons


def _openvino_int8_plan(model_dir, options: dict):
    """(the OpenVINO candidate with this model's verified INT8 plan: ``int8`` / ``int8-mixed`` graphs where
    the export's accuracy control and the stored references passed, the rest FP32, "") or (None, why not;
    "" when the export holds no INT8 IR)."""
    from ..manifest import load_manifest
    from ..verify import int8_graphs

    try:
        if not int8_graphs(load_manifest(model_dir, precision="fp32", verify=False)):
            return None, ""
    except ModelError:
        return None, ""
    if availability("openvino")[0] is None:
        return None, ""   # said once by the BF16 candidate
    return _verified_plan_candidate(model_dir, "int8", "openvino int8", "the verified INT8 plan", options)


def _measured_cpu_choice(model_dir, options: dict, reasons: list[str]) -> Choice:
    """The fastest of ``cpu_candidates`` (timed on first use); one candidate is taken as it is."""
    candidates, why_not = cpu_candidates(model_dir, options)
    reasons = reasons + why_not
    if not candidates:
        select_backend("onnxruntime")     # raises with the reason
    if len(candidates) == 1:
        c = candidates[0]
        return Choice(c.backend, c.graph_precision, c.precision, c.options,
                      f"{c.how}, the only verified CPU candidate (" + "; ".join(reasons) + ")")
    from ..timing import measure
    from ..util import one_line

    try:
        measured = measure(model_dir, candidates)
    except (ModelError, BackendError) as exc:   # cannot time: the reference backend, said why
        c = candidates[0]
        return Choice(c.backend, c.graph_precision, c.precision, c.options,
                      f"{c.how}; the candidates could not be timed ({one_line(exc)})")
    best = measured.winner
    return Choice(best.backend, best.graph_precision, best.precision, best.options,
                  f"{best.how}: the fastest verified CPU candidate ({measured.summary()})", measured.candidates,
                  measured.size)


def choose_backend(model_dir, backend: str = "auto", precision: str | None = None, device: int = 0,
                   **options) -> Choice:
    """Pick backend and precision for a model (see the module docstring); ``BackendError`` says why not.

    Args:
        model_dir: the exported model directory (its verified plan is looked up for OpenVINO).
        backend: "auto" or a key of BACKENDS.
        precision: None (auto: on a CPU the fastest verified candidate, measured), "fp32", "fp16",
            "bf16" or "int8" (OpenVINO; int8 only where the model directory holds export-verified INT8
            IR, never chosen by auto).
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
    cls, reason = availability("tensorrt")
    if cls is not None:
        return Choice("tensorrt", "fp32", "fp32", plain, "TensorRT and a GPU are available")
    reasons.append(f"tensorrt: {reason}")
    ok, reason = _ort_cuda(device)
    if ok:
        return Choice("onnxruntime", "fp32", "fp32", plain,
                      "ONNX Runtime CUDA (no TensorRT: " + reasons[0] + ")")
    reasons.append(f"onnxruntime CUDA: {reason}")
    return _measured_cpu_choice(model_dir, options, reasons)
