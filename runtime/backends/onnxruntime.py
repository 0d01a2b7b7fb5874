"""ONNX Runtime backend (the embedded default).

One InferenceSession per graph, created once in ``activate()`` and reused. Graph optimization
ORT_ENABLE_ALL; intra-op threads = the physical cores this process may use (CPU affinity, cgroup
quota). Providers: ``providers=None`` uses CUDA (with IO binding, outputs copied back once) when
onnxruntime-gpu is installed and a GPU is visible, else the CPU provider; pass e.g.
``providers=["CPUExecutionProvider"]`` to force one.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from ..errors import BackendError, ModelError
from ..manifest import graph_names, graph_path
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
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return os.path.exists(f"/dev/nvidia{device}") or os.path.exists("/dev/nvidiactl")


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0,
                 providers=None, intra_op_threads: int | None = None, inter_op_threads: int = 1,
                 **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        self.requested_providers = providers
        self.intra_op_threads = intra_op_threads or default_threads()
        self.inter_op_threads = inter_op_threads
        self.sessions: dict = {}
        self.output_names: dict = {}
        self.providers: list = []
        self.use_iobinding = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
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

    def activate(self) -> None:
        if self.active:
            return
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(self.intra_op_threads)
        opts.inter_op_num_threads = int(self.inter_op_threads)
        opts.log_severity_level = 3
        providers = self._providers(ort)
        sessions = {}
        for graph in graph_names(self.manifest):
            path = graph_path(self.model_dir, self.manifest, self.precision, graph)
            try:
                sessions[graph] = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(f"model {self.model_dir}: onnxruntime cannot load {path.name} ({text})") from None
            self._check_io(graph, sessions[graph])
        self.sessions = sessions
        self.output_names = {g: [o.name for o in s.get_outputs()] for g, s in sessions.items()}
        first = next(iter(sessions.values()))
        self.providers = first.get_providers()
        self.use_iobinding = self.providers[0] == CUDA
        self.active = True

    def _check_io(self, graph: str, session) -> None:
        entry = self.manifest["graphs"][self.precision][graph]
        for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            listed = [io["name"] for io in entry.get(kind, []) if isinstance(io, dict) and "name" in io]
            names = [a.name for a in actual]
            if listed and listed != names:
                raise ModelError(f"model {self.model_dir}: {entry['file']} has {kind} {names}, "
                                 f"manifest.json lists {listed}")

    def infer(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.active:
            raise RuntimeError("OnnxRuntimeRunner.infer called before activate()")
        session = self.sessions[graph]
        if not self.use_iobinding:
            names = self.output_names[graph]
            return dict(zip(names, session.run(names, dict(feeds))))
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names = self.output_names[graph]
        for name in names:
            binding.bind_output(name, "cuda", self.device)
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def deactivate(self) -> None:
        self.sessions = {}
        self.active = False
