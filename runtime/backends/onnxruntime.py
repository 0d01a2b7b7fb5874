"""ONNX Runtime backend (the embedded default), in the Runner seam's shape (see base.py).

One InferenceSession per graph, created once in ``activate()`` and reused. Graph optimization
ORT_ENABLE_ALL; intra-op threads = the physical cores this process may use (CPU affinity, cgroup
quota). Providers: ``providers=None`` uses CUDA (with IO binding, outputs copied back once) when
onnxruntime-gpu is installed and a GPU is visible, else the CPU provider; pass e.g.
``providers=["CPUExecutionProvider"]`` to force one.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError, ModelError
from ..manifest import graph_names, graph_path
from ..util import one_line
from .base import Runner

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _cgroup_cpus() -> float | None:
    """CPU quota of this container (cgroup v2 or v1), None when unlimited or unknown."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def _physical_cores() -> int | None:
    """Distinct (package, core) pairs in /proc/cpuinfo (Linux), else psutil, else None."""
    try:
        pairs, phys = set(), None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    pairs.add((phys, value.strip()))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    try:
        import psutil
        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


def default_threads() -> int:
    """Intra-op threads that fit the machine: usable logical CPUs, capped by the physical cores
    and the cgroup quota (hyper-threads slow ORT's conv kernels down)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    limits = [usable]
    physical = _physical_cores()
    if physical:
        limits.append(physical)
    quota = _cgroup_cpus()
    if quota:
        limits.append(max(1, int(quota)))
    return max(1, min(limits))


def _gpu_visible(device: int) -> bool:
    """True unless CUDA_VISIBLE_DEVICES hides every GPU or no NVIDIA device node exists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists(f"/dev/nvidia{device}") or os.path.exists("/dev/nvidiactl")


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(double)": np.float64, "tensor(bool)": np.bool_}


class OnnxRuntimeRunner(Runner):
    """Runs a model's ONNX graphs with ONNX Runtime (CPU, or CUDA with IO binding).

    Args:
        model_dir, manifest, precision, device: as ``Runner``.
        providers: execution providers to use (None: CUDA when usable, else CPU).
        intra_op_threads: threads per operator (None: ``default_threads()``).
        inter_op_threads: threads across operators (1: sequential execution).
        memory_arena: keep ONNX Runtime's per-session CPU arena and memory patterns (default True); the
            streaming executor's many segment sessions run without (an arena keeps its peak for good).

    Native values are ``onnxruntime.OrtValue`` on the session's device ("cpu" or "cuda"):
    ``infer(..., host_outputs=False)`` binds outputs on that device and returns them, and OrtValue
    feeds are bound as they are, so latents go from graph to graph without numpy. On CUDA, numpy
    feeds are copied from ``staging()`` arrays in pinned memory (cuda-python) and ``broadcast``
    repeats a style code with device-to-device copies.
    """

    name = "onnxruntime"
    OPTIONS = frozenset({"providers", "intra_op_threads", "inter_op_threads", "memory_arena"})
    DEVICE_VALUES = True

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        self.requested_providers = options.get("providers")
        self.intra_op_threads = options.get("intra_op_threads") or default_threads()
        self.inter_op_threads = options.get("inter_op_threads") or 1
        self.memory_arena = options.get("memory_arena", True) is not False
        self.sessions: dict = {}
        self.output_names: dict = {}
        self.providers: list = []
        self.use_iobinding = False
        self.device_type = "cpu"
        self._pinned: dict = {}
        self._stream = None

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, "") when onnxruntime imports."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, "onnxruntime is not installed (pip install 'quantart[cpu]' or 'quantart[gpu]')"
        return True, ""

    def _providers(self, ort) -> list:
        available = ort.get_available_providers()
        if self.requested_providers is not None:
            wanted = [p if isinstance(p, str) else p[0] for p in self.requested_providers]
            missing = [p for p in wanted if p not in available]
            if missing:
                raise BackendError(f"onnxruntime here has no {', '.join(missing)} "
                                   f"(available: {', '.join(available)})")
            return [p if not (isinstance(p, str) and p == CUDA) else (CUDA, {"device_id": self.device})
                    for p in self.requested_providers]
        if CUDA in available and _gpu_visible(self.device):
            return [(CUDA, {"device_id": self.device}), CPU]
        return [CPU]

    def activate_impl(self) -> None:
        """One InferenceSession per graph (ORT_ENABLE_ALL, sequential, the configured threads)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(self.intra_op_threads)
        opts.inter_op_num_threads = int(self.inter_op_threads)
        opts.log_severity_level = 3
        if not self.memory_arena:
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False
        # The graphs run one after another, each session with its own intra-op pool: a pool that spins
        # after its run steals the cores the next graph's pool needs (measured: +50 % end to end on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = self._providers(ort)
        sessions = {}
        for graph in graph_names(self.manifest):
            path = graph_path(self.model_dir, self.manifest, self.precision, graph)
            try:
                sessions[graph] = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:
                raise ModelError(f"model {self.model_dir}: onnxruntime cannot load {path.name} "
                                 f"({one_line(exc)})") from None
            self._check_io(graph, sessions[graph])
        self.sessions = sessions
        self.output_names = {g: [o.name for o in s.get_outputs()] for g, s in sessions.items()}
        first = next(iter(sessions.values()))
        self.providers = first.get_providers()
        self.use_iobinding = self.providers[0] == CUDA
        self.device_type = "cuda" if self.use_iobinding else "cpu"

    def _check_io(self, graph: str, session) -> None:
        entry = self.manifest["graphs"][self.precision][graph]
        for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            listed = [io["name"] for io in entry.get(kind, []) if isinstance(io, dict) and "name" in io]
            names = [a.name for a in actual]
            if listed and listed != names:
                raise ModelError(f"model {self.model_dir}: {entry['file']} has {kind} {names}, "
                                 f"manifest.json lists {listed}")

    def deactivate_impl(self) -> None:
        """Drop the sessions and free pinned buffers (partial state too)."""
        try:
            for buf in self._pinned.values():
                buf.release()
            if self._stream is not None:
                self._stream.close()
        finally:
            self._pinned.clear()
            self._stream = None
            self.sessions = {}

    # ---- values -------------------------------------------------------------------------------
    def is_device_value(self, value) -> bool:
        """True for an ``onnxruntime.OrtValue``."""
        from onnxruntime import OrtValue

        return isinstance(value, OrtValue)

    def value_info(self, value) -> tuple[np.dtype, int]:
        """(dtype, rank) of an OrtValue."""
        return np.dtype(_ORT_DTYPES.get(value.data_type(), np.void)), len(value.shape())

    def value_shape(self, value) -> tuple[int, ...]:
        """Shape of an OrtValue or numpy array."""
        return tuple(value.shape()) if self.is_device_value(value) else np.asarray(value).shape

    def to_device_impl(self, array: np.ndarray):
        """An OrtValue on the session's device holding a copy of ``array``."""
        from onnxruntime import OrtValue

        return OrtValue.ortvalue_from_numpy(np.array(array, copy=True), self.device_type, self.device)

    def to_host_impl(self, value) -> np.ndarray:
        """``value.numpy()`` (a D2H copy on CUDA)."""
        return value.numpy()

    def _cuda_stream(self):
        if self._stream is None:
            from . import cuda_mem

            self._stream = cuda_mem.Stream(self.device)
        return self._stream

    def broadcast_impl(self, value, batch: int):
        """Repeat a batch-1 OrtValue to ``batch`` on its device (CUDA: device-to-device copies through
        cuda-python; without it, one download and one upload, counted as such)."""
        from onnxruntime import OrtValue

        if self.device_type == "cpu":      # host memory is the device: repeat in place
            return OrtValue.ortvalue_from_numpy(np.repeat(value.numpy(), batch, axis=0), "cpu", 0)
        shape = (batch,) + tuple(value.shape()[1:])
        dtype, _ = self.value_info(value)
        try:
            from . import cuda_mem
            stream = self._cuda_stream()
        except ImportError:
            self.transfers.update({"d2h": 1, "h2d": 1})
            return OrtValue.ortvalue_from_numpy(np.repeat(value.numpy(), batch, axis=0), "cuda", self.device)
        out = OrtValue.ortvalue_from_shape_and_type(list(shape), dtype.type, "cuda", self.device)
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        cuda_mem.broadcast_rows(out.data_ptr(), value.data_ptr(), row, batch, stream)
        stream.synchronize()
        return out

    @property
    def pinned_staging(self) -> bool:
        """True on CUDA when cuda-python can allocate pinned memory."""
        if self.device_type != "cuda":
            return False
        try:
            from . import cuda_mem

            cuda_mem.cudart()
        except ImportError:
            return False
        return True

    def staging_impl(self, shape: tuple, dtype, slot: int) -> np.ndarray:
        """CUDA with cuda-python: a pinned host array per slot; otherwise a plain numpy array."""
        if self.device_type == "cuda":
            try:
                from . import cuda_mem

                cuda_mem.cudart()
            except ImportError:
                return super().staging_impl(shape, dtype, slot)
            return self._pinned.setdefault(slot, cuda_mem.PinnedStaging()).array(shape, dtype)
        return super().staging_impl(shape, dtype, slot)

    # ---- inference ----------------------------------------------------------------------------
    def infer_impl(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool) -> dict:
        """``session.run`` for numpy in/out on the CPU; IO binding otherwise (OrtValues in and out)."""
        session = self.sessions[graph]
        names = self.output_names[graph]
        device_feeds = any(not isinstance(v, np.ndarray) for v in feeds.values())
        if host_outputs and not device_feeds and not self.use_iobinding:
            return dict(zip(names, session.run(names, dict(feeds))))
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, self.device_type, self.device)
        session.run_with_iobinding(binding)
        if host_outputs:
            return dict(zip(names, binding.copy_outputs_to_cpu()))
        return dict(zip(names, binding.get_outputs()))
