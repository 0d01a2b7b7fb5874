"""ONNX Runtime backend (the embedded default), in the Runner seam's shape (see base.py).

One InferenceSession per graph, created once in ``activate()`` and reused. Graph optimization
ORT_ENABLE_ALL; intra-op threads = the physical cores this process may use (CPU affinity, cgroup
quota). Providers: ``providers=None`` uses CUDA (with IO binding, outputs copied back once) when
onnxruntime-gpu is installed and a GPU is visible, else the CPU provider; pass e.g.
``providers=["CPUExecutionProvider"]`` to force one. A session that does not run on every
provider asked for (ONNX Runtime falls back to the CPU when the CUDA provider cannot start) is a
``BackendError`` naming the provider it got, never a silent CPU run.

Fused attention: where the manifest lists a graph's ONNX Runtime variant (``ort_fused``: every attention
as one ``com.microsoft.MultiHeadAttention``, memory linear in the tokens; verified at export like every
graph), the runner runs it on the CPU and CUDA providers (``fused_attention=None``, the default);
``fused_attention=False`` runs the standard graphs, ``True`` requires the variants. ``runner.fused_graphs``
names the variant files in use and ``runner.linear_attention`` says whether every attention runs fused.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError, ModelError
from ..manifest import graph_names, graph_path, sha256_file, verified_digests
from ..util import one_line
from .base import Runner

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
FUSED_PROVIDERS = (CPU, CUDA)   # the providers with a com.microsoft.MultiHeadAttention kernel


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


_SHARED_ARENA: list = []          # [True/False] once tried: one CPU memory arena for every session here
_SHARED_ARENA_LOCK = threading.Lock()


def shared_cpu_arena(ort) -> bool:
    """Register one CPU memory arena for every session of this process (ONNX Runtime's environment
    allocator; sessions opt in with ``session.use_env_allocators``), once. With one arena per session,
    each graph's arena stays at that graph's peak after its run, so a request held the content encoder's
    and the decoder's peaks at once (measured, tiny model 192²: 96 MB); shared, the graphs reuse one
    arena and the peak is the largest graph's (60 MB), as ``quantart_runtime.memory`` counts it.
    False where this onnxruntime cannot (then every session keeps its own arena)."""
    with _SHARED_ARENA_LOCK:
        if not _SHARED_ARENA:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # kSameAsRequested (1): the arena grows by what is asked, not by doubling chunks, so its
                # address space stays near the largest graph's or tile's working set (an RLIMIT_AS bound
                # failed with doubling chunks: the streamed 12 MP run at a 3 GiB budget)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
                _SHARED_ARENA.append(True)
            except Exception:  # noqa: BLE001 (an onnxruntime without the API, or one registered elsewhere)
                _SHARED_ARENA.append(False)
        return _SHARED_ARENA[0]


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(double)": np.float64, "tensor(bool)": np.bool_}


class OnnxRuntimeRunner(Runner):
    """Runs a model's ONNX graphs with ONNX Runtime (CPU, or CUDA with IO binding).

    Args:
        model_dir, manifest, precision, device: as ``Runner``.
        providers: execution providers to use (None: CUDA when usable, else CPU).
        intra_op_threads: threads per operator (None: ``default_threads()``).
        inter_op_threads: threads across operators (1: sequential execution).
        fused_attention: None (default): run each graph's fused-attention variant where the manifest lists
            one and the first provider is CPU or CUDA; False: the standard graphs; True: require them.
        memory_arena: use a CPU arena and memory patterns (default True): the process's one shared arena
            (``shared_cpu_arena``) where this onnxruntime has it, else one per session; False: plain
            allocations (the streaming executor's segment sessions, when no shared arena exists).

    Native values are ``onnxruntime.OrtValue`` on the session's device ("cpu" or "cuda"):
    ``infer(..., host_outputs=False)`` binds outputs on that device and returns them, and OrtValue
    feeds are bound as they are, so latents go from graph to graph without numpy. On CUDA, numpy
    feeds are copied from ``staging()`` arrays in pinned memory (cuda-python) and ``broadcast``
    repeats a style code with device-to-device copies.
    """

    name = "onnxruntime"
    OPTIONS = frozenset({"providers", "intra_op_threads", "inter_op_threads", "fused_attention", "memory_arena"})
    DEVICE_VALUES = True

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        self.requested_providers = options.get("providers")
        self.intra_op_threads = options.get("intra_op_threads") or default_threads()
        self.inter_op_threads = options.get("inter_op_threads") or 1
        self.fused_attention = options.get("fused_attention")
        self.fused_graphs: dict[str, str] = {}     # graph -> the fused-attention file it runs
        self.linear_attention = False              # every attending graph runs fused
        self.memory_arena = options.get("memory_arena", True) is not False
        self.release_arena = False   # True: every run hands the arena's free CPU memory back (memory-bound streaming)
        self._release_options = None
        self.sessions: dict = {}
        self.output_names: dict = {}
        self.providers: list = []
        self.use_iobinding = False
        self.device_type = "cpu"
        self._pinned: dict = {}
        self._pinned_lock = threading.Lock()
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
        if self.requested_providers is not None:
            return [p if not (isinstance(p, str) and p == CUDA) else (CUDA, {"device_id": self.device})
                    for p in self.requested_providers]
        if CUDA in ort.get_available_providers() and _gpu_visible(self.device):
            return [(CUDA, {"device_id": self.device}), CPU]
        return [CPU]

    def _check_providers(self, ort, graph: str, asked: list, got: list) -> None:
        """``BackendError`` unless the session runs on every provider asked for.

        InferenceSession does not fail when an execution provider cannot start (CUDA libraries
        missing, a CPU-only onnxruntime): it warns and goes on with the CPU provider. Its
        ``get_providers()`` says what it really uses; anything asked for and absent there is an error
        here, never a silent CPU run.
        """
        wanted = [p if isinstance(p, str) else p[0] for p in asked]
        missing = [p for p in wanted if p not in got]
        if missing:
            available = ort.get_available_providers()
            why = "" if all(p in available for p in missing) else " (this onnxruntime does not have it)"
            raise BackendError(f"onnxruntime could not start {', '.join(missing)} for {graph}{why}: the session "
                               f"runs on {', '.join(got)}; available here: {', '.join(available)}. For the CPU, "
                               f"pass providers=['{CPU}']")

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
        # the graphs share one CPU arena: a request's peak is its largest graph's (segment sessions run without)
        if self.memory_arena and shared_cpu_arena(ort):
            opts.add_session_config_entry("session.use_env_allocators", "1")
        providers = self._providers(ort)
        sessions = {}
        fused = {}
        for graph in graph_names(self.manifest):
            path = self._fused_path(graph, providers)
            if path is None:
                path = graph_path(self.model_dir, self.manifest, self.precision, graph)
            else:
                fused[graph] = path.name
            try:
                sessions[graph] = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as exc:
                raise ModelError(f"model {self.model_dir}: onnxruntime cannot load {path.name} "
                                 f"({one_line(exc)})") from None
            self._check_providers(ort, graph, providers, sessions[graph].get_providers())
            self._check_io(graph, sessions[graph])
        if self.fused_attention is True and not fused:
            raise ModelError(f"model {self.model_dir}: manifest lists no fused-attention graphs for "
                             f"{self.precision} (re-export with this quantart-export)")
        self.sessions = sessions
        self.fused_graphs = fused
        listed = [g for g in graph_names(self.manifest)
                  if isinstance(self.manifest["graphs"][self.precision][g].get("ort_fused"), dict)]
        self.linear_attention = bool(listed) and all(g in fused for g in listed)
        self.output_names = {g: [o.name for o in s.get_outputs()] for g, s in sessions.items()}
        first = next(iter(sessions.values()))
        self.providers = first.get_providers()
        self.use_iobinding = self.providers[0] == CUDA
        self.device_type = "cuda" if self.use_iobinding else "cpu"

    def _fused_path(self, graph: str, providers: list):
        """The fused-attention variant of ``graph`` to run (sha256-checked when the manifest was verified),
        or None for the standard graph (``fused_attention`` option, provider, or no variant listed)."""
        entry = self.manifest["graphs"][self.precision][graph].get("ort_fused")
        required = self.fused_attention is True
        if self.fused_attention is False:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return None   # no attention in this graph (or an export from before the variants)
        first = providers[0] if isinstance(providers[0], str) else providers[0][0]
        if first not in FUSED_PROVIDERS:
            if required:
                raise BackendError(f"fused attention (com.microsoft.MultiHeadAttention) runs on "
                                   f"{' or '.join(FUSED_PROVIDERS)}, not {first}")
            return None
        name = entry["file"]
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelError(f"model {self.model_dir}: graph file {name!r} must be a plain name inside the directory")
        path = Path(self.model_dir) / name
        if not path.is_file():
            if required:
                raise ModelError(f"model {self.model_dir}: fused-attention graph {name} is missing")
            return None
        if verified_digests(self.manifest) and sha256_file(path) != str(entry.get("sha256", "")).lower():
            raise ModelError(f"model {self.model_dir}: {name} does not match its sha256 in manifest.json "
                             f"(corrupt or modified file; re-export the model)")
        return path

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
            with self._pinned_lock:
                buffers = list(self._pinned.values())
            for buf in buffers:
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
            cuda_mem.set_device(self.device)    # also from the preprocessing thread
            with self._pinned_lock:
                buf = self._pinned.setdefault(slot, cuda_mem.PinnedStaging(self.device))
            return buf.array(shape, dtype)
        return super().staging_impl(shape, dtype, slot)

    # ---- inference ----------------------------------------------------------------------------
    def _run_options(self):
        """None, or with ``release_arena`` run options that shrink the CPU arena after each run (ONNX
        Runtime's ``memory.enable_memory_arena_shrinkage``: its free regions go back to the system)."""
        if not self.release_arena:
            return None
        if self._release_options is None:
            import onnxruntime as ort

            ro = ort.RunOptions()
            ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
            self._release_options = ro
        return self._release_options

    def infer_impl(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool) -> dict:
        """``session.run`` for numpy in/out on the CPU; IO binding otherwise (OrtValues in and out)."""
        session = self.sessions[graph]
        names = self.output_names[graph]
        device_feeds = any(not isinstance(v, np.ndarray) for v in feeds.values())
        if host_outputs and not device_feeds and not self.use_iobinding:
            return dict(zip(names, session.run(names, dict(feeds), self._run_options())))
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:
                binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, self.device_type, self.device)
        session.run_with_iobinding(binding, self._run_options())
        if host_outputs:
            return dict(zip(names, binding.copy_outputs_to_cpu()))
        return dict(zip(names, binding.get_outputs()))
