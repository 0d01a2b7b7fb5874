"""The exported-model backends under test, driven through quantart_runtime (no torch here):
ONNX Runtime CPU, ONNX Runtime CUDA, ONNX Runtime's TensorRT provider, native TensorRT FP16, and
OpenVINO on the CPU: FP32, every graph BF16 (forced, not verified), the verified precision plan
(``quantart verify``; verified once on this CPU, then cached), INT8 (the NNCF INT8 IR that
``quantart-export --int8-calibration`` stored and gated; graphs without one run FP32) and
``openvino-int8-mixed``: the verified INT8 plan (``quantart verify --precision int8``: ``int8`` /
``int8-mixed`` where the stored IR passes on this CPU, the rest FP32).

Same bench interface as torch_backends.TorchBench (see worker.py)."""
from __future__ import annotations

import os

import numpy as np

from .samples import STYLE_SIZE

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"

# bench name → (runtime backend, ONNX Runtime providers, graph precision)
RUNTIME_BACKENDS = {
    "ort-cpu": ("onnxruntime", [CPU], "fp32"),
    "ort-cuda": ("onnxruntime", [CUDA, CPU], "fp32"),
    "ort-trt": ("onnxruntime", [TRT, CUDA, CPU], "fp32"),
    "tensorrt-fp16": ("tensorrt", None, "fp16"),
    "openvino-fp32": ("openvino", None, "fp32"),
    "openvino-bf16": ("openvino", None, "bf16"),
    "openvino-plan": ("openvino", None, "plan"),
    "openvino-int8": ("openvino", None, "int8"),
    "openvino-int8-mixed": ("openvino", None, "int8-plan"),
}


def _gpu_present() -> bool:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def availability(name: str, manifest: dict | None) -> tuple[bool, str]:
    """(available, reason) for an exported-model backend, without starting it."""
    backend, providers, precision = RUNTIME_BACKENDS[name]
    try:
        from quantart_runtime.backends import get_runner_class
    except ImportError as exc:
        return False, f"quantart_runtime cannot be imported ({exc})"
    if backend == "openvino":
        return _openvino_availability(precision, manifest)
    if manifest is not None and precision not in (manifest.get("graphs") or {}):
        return False, (f"the model directory has no {precision} graphs "
                       f"(export with --precision {precision} or both)")
    try:
        ok, reason = get_runner_class(backend).is_available()
    except Exception as exc:  # a broken install is a reason to skip, not to crash the bench
        return False, f"{type(exc).__name__}: {exc}"
    if not ok:
        return False, reason
    if providers is not None:
        import onnxruntime as ort
        have = ort.get_available_providers()
        missing = [p for p in providers if p not in have]
        if missing:
            return False, (f"onnxruntime {ort.__version__} here has no {', '.join(missing)} "
                           f"(available: {', '.join(have)}; needs onnxruntime-gpu)")
        if providers[0] != CPU and not _gpu_present():
            return False, "no NVIDIA GPU visible"
    return True, ""


def _openvino_availability(precision: str, manifest: dict | None) -> tuple[bool, str]:
    from quantart_runtime.backends import get_runner_class

    try:
        ok, reason = get_runner_class("openvino").is_available()
    except Exception as exc:  # an import failure is a reason to skip
        return False, f"{type(exc).__name__}: {exc}"
    if not ok:
        return False, reason
    if precision in ("int8", "int8-plan"):
        graphs = sorted(((manifest or {}).get("int8") or {}).get("graphs") or {})
        if manifest is not None and not graphs:
            return False, ("the model directory has no verified INT8 IR "
                           "(export it with quantart-export --int8-calibration DIR)")
        return True, ""
    if precision != "fp32":
        from quantart_runtime.backends.openvino import cpu_capabilities, cpu_name

        if "BF16" not in cpu_capabilities():
            return False, f"this CPU ({cpu_name()}) has no BF16 units (OpenVINO reports no BF16)"
    if precision == "plan" and manifest is not None and not manifest.get("verification_data"):
        return False, "the model directory has no verification data (re-export it) for a verified plan"
    return True, ""


class RuntimeBench:
    """Stylization through quantart_runtime.Stylizer on one backend."""

    def __init__(self, name: str, model_dir, device: int = 0):
        self.name = name
        self.backend, self.providers, self.precision = RUNTIME_BACKENDS[name]
        self.model_dir = model_dir
        self.device_index = device
        self.stylizer = None

    def setup(self) -> dict:
        """Load the Stylizer on this backend; returns info (device, precision, runtime backend, providers,
        threads). Raises the runtime's ``ModelError`` / ``BackendError``.
        """
        from quantart_runtime import Stylizer

        if self.backend == "openvino":
            options = {}
            if self.precision in ("plan", "int8-plan"):
                from quantart_runtime.verify import plan_for

                result = plan_for(self.model_dir, "openvino", "bf16" if self.precision == "plan" else "int8")
                options = {"plan": result.plan}
                precision = None
            else:
                precision = self.precision
            self.stylizer = Stylizer.load(self.model_dir, backend="openvino", precision=precision, **options)
        else:
            self.stylizer = Stylizer.load(self.model_dir, backend=self.backend, device=self.device_index,
                                          providers=self.providers, precision=self.precision)
        runner = self.stylizer.runner
        on_cpu = self.providers == [CPU] or self.backend == "openvino"
        info = {"device": "cpu" if on_cpu else f"cuda:{self.device_index}",
                "precision": self.precision, "runtime_backend": runner.name}
        if self.backend == "openvino":
            info["plan"] = dict(runner.plan)
            info["keep_fp32"] = list(runner.keep_fp32)
            info["threads"] = runner.num_threads
        for attr in ("providers", "intra_op_threads"):
            if hasattr(runner, attr):
                value = getattr(runner, attr)
                info[attr] = [p if isinstance(p, str) else p[0] for p in value] if attr == "providers" else value
        return info

    def sync(self) -> None:  # runner.infer returns host arrays: every call is synchronous
        """Nothing to wait for: ``runner.infer`` returns host arrays, so every call is synchronous."""
        return None

    def reset_device_peak(self) -> None:
        """No device memory counter through the runtime: nothing to reset."""
        return None

    def device_peak_mb(self) -> float | None:
        """Device memory peak: not measurable through the runtime, ``None``."""
        return None

    # -- the pipeline -------------------------------------------------------------------------
    def encode_style(self, style_u8: np.ndarray):
        """Encode the HWC uint8 style image at ``STYLE_SIZE``; returns the runtime's StyleCode."""
        return self.stylizer.encode_style(style_u8, size=STYLE_SIZE)

    def stylize(self, contents: list[np.ndarray], style) -> list[np.ndarray]:
        """Stylize the HWC uint8 ``contents`` (one batch) with ``style`` (image or StyleCode); HWC uint8 out."""
        return self.stylizer.stylize(contents, style, batch_size=len(contents), style_size=STYLE_SIZE)

    def fidelity(self, content_u8: np.ndarray, style_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One (content, style) pair -> (HWC uint8 image, SGA output tokens (h, w) int64)."""
        st = self.stylizer
        code = st.encode_style(style_u8, size=STYLE_SIZE)
        x = st.preprocess([content_u8])
        latent, indices = st.stylize_latent(st.content_latent(x), code.batched(1))
        image = st.postprocess(st.decode(latent), [content_u8.shape[:2]])[0]
        return image, np.asarray(indices[0], dtype=np.int64)

    def graph_calls(self, contents: list[np.ndarray], style_u8: np.ndarray) -> dict:
        """Per-graph callables with prepared inputs, plus pre- and post-processing."""
        st = self.stylizer
        b = len(contents)
        x = st.preprocess(contents)
        s = st.preprocess([style_u8])
        h_x = st.content_latent(x)
        ref = st.style_latent(s)[0]
        ref_b = np.ascontiguousarray(np.repeat(ref, b, axis=0))
        y_latent = st.stylize_latent(h_x, ref_b)[0]
        y = st.decode(y_latent)
        sizes = [c.shape[:2] for c in contents]
        return {
            "content_encoder": lambda _i: st.content_latent(x),
            "style_encoder": lambda _i: st.style_latent(s),
            "sga": lambda _i: st.stylize_latent(h_x, ref_b),
            "decoder": lambda _i: st.decode(y_latent),
            "pre_post": lambda _i: (st.preprocess(contents), st.postprocess(y, sizes)),
        }

    def graph_call_counts(self) -> dict:
        """How many times each graph has run so far (the Stylizer's counters)."""
        return dict(self.stylizer.graph_calls)

    def close(self) -> None:
        """Release the Stylizer (sessions, engines); safe to call twice."""
        if self.stylizer is not None:
            self.stylizer.close()
            self.stylizer = None
