"""TensorRT backend (``backend="tensorrt"``): runs the engines that ``trt_engine.EngineLoader`` builds or loads.

One CUDA stream (cuda-python) for everything; per graph one execution context with user-managed
context memory: before each call the runner asks TensorRT how much scratch the call's shapes need
(``update_device_memory_size_for_shapes``) and hands it one shared, grow-only device buffer, so a
profile up to batch 32 at 1024² does not reserve its worst case per context at activation.

Device data path (``infer(..., host_outputs=False)``): outputs stay on the device as ``DeviceArray``
values that the next ``infer`` accepts as feeds; ``to_device`` uploads once (style code, ratios),
``broadcast`` repeats a batch-1 value on the device; numpy feeds go through pinned staging buffers
(``staging()`` hands them out, so preprocessing writes straight into pinned memory) with one
asynchronous H2D copy each; host outputs come back with one D2H copy into pinned memory.

Threads: ``staging()`` is called from the Stylizer's preprocessing thread while the caller's
thread uploads and runs, so the pinned-buffer table is guarded by a lock, and every entry point
selects the runner's device first (CUDA's current device is per thread). ``deactivate()`` frees
every device array the runner allocated, including ones still referenced elsewhere (their
``alive`` is then false and feeding them is a ``ValueError``), and hands the pool's free memory
back (``cuda_mem.DevicePool``).

The memory primitives come from ``self.mem`` (``cuda_mem``): the host-side logic above the CUDA
calls (the buffer table, staging, uploads, scratch sizing) is thereby tested on the CPU with plain
host memory standing where device memory stands (tests/test_trt_runner_memory.py); what needs a GPU
is in benchmarks/device_check.sh.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping

import numpy as np

from ..errors import BackendError
from . import cuda_mem as cm
from .base import Runner
from .trt_engine import MIN_TENSORRT, PROFILE_KEYS, EngineLoader, profile_shapes, tensorrt_version_ok


class TensorRTRunner(Runner):
    """Runs a model's graphs as TensorRT engines on one GPU (see the module docstring).

    Options: ``cache_dir`` (engine cache), ``workspace_gb`` (builder workspace), and the profile
    overrides ``min_res``, ``opt_res``, ``max_res``, ``max_batch``, ``opt_batch``.
    ``cache_status`` maps each graph to "hit", "built" or "rebuilt" after ``activate``.
    """

    name = "tensorrt"
    OPTIONS = frozenset({"cache_dir", "workspace_gb", *PROFILE_KEYS})
    DEVICE_VALUES = True
    mem = cm            # the memory primitives (see the module docstring)

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        self.cache_status: dict[str, str] = {}
        self.engines: dict = {}
        self.contexts: dict = {}
        self.stream = None
        self.scratch = None
        self.pool = None
        self._pinned: dict = {}
        self._pinned_lock = threading.Lock()

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """TensorRT >= MIN_TENSORRT, cuda-python and a CUDA device. Triton and onnx are needed only
        to build engines (``trt_engine``): cached engines load without them."""
        try:
            import tensorrt as trt
        except ImportError as e:
            return False, f"TensorRT is not installed ({e})"
        if not tensorrt_version_ok(trt.__version__):
            return False, f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_TENSORRT))}"
        try:
            rt = cm.cudart()
        except ImportError:
            return False, "cuda-python is not installed"
        err, count = rt.cudaGetDeviceCount()
        if err != rt.cudaError_t.cudaSuccess or count == 0:
            return False, "no CUDA device is visible"
        return True, ""

    def profile(self, graph: str) -> dict:
        """{input: [min, opt, max] shape} of ``graph``'s optimization profile (manifest + options)."""
        entry = self.manifest["graphs"][self.precision][graph]
        return profile_shapes(self.manifest, entry, self.options)

    # ---- life cycle -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        """Create the stream, then load or build each graph's engine and its execution context."""
        ok, why = self.is_available()
        if not ok:
            raise BackendError(f"backend 'tensorrt' is not available: {why}")
        import tensorrt as trt

        rt = cm.cudart()
        self.start_memory()
        props = cm.check(rt.cudaGetDeviceProperties(self.device))
        self.gpu_name = props.name.decode(errors="replace").rstrip("\x00")
        self.cc = (props.major, props.minor)
        loader = EngineLoader(self.model_dir, self.manifest, self.precision, gpu_name=self.gpu_name,
                              compute_capability=self.cc, driver_version=cm.check(rt.cudaDriverGetVersion()),
                              cache_dir=self.options.get("cache_dir"), workspace_gb=self.options.get("workspace_gb"),
                              profile=self.options)
        for graph in self.manifest["graphs"][self.precision]:
            engine = loader.load(graph)
            if engine is None:
                raise BackendError(f"TensorRT could not deserialize the engine of {graph}")
            context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise BackendError(f"TensorRT could not create an execution context for {graph}")
            self.engines[graph], self.contexts[graph] = engine, context
        self.cache_status = dict(loader.cache_status)
        self.io = {g: self._io(e) for g, e in self.engines.items()}

    def start_memory(self) -> None:
        """The stream, the shared context-memory buffer and the warm pool (no TensorRT involved:
        the device check runs the data path on them)."""
        self.pool = self.mem.DevicePool(self.device)     # freed blocks stay in the pool between calls
        self.stream = self.mem.Stream(self.device)
        self.scratch = self.mem.SharedScratch(self.stream)

    def _io(self, engine) -> list[tuple[str, bool, np.dtype]]:
        import tensorrt as trt

        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
        return out

    def deactivate_impl(self) -> None:
        """Wait for the stream; free pinned buffers, contexts, engines, every device array allocated
        on the stream (also those still referenced elsewhere) and the stream; trim the pool
        (partial state too)."""
        stream, pool = self.stream, self.pool
        try:
            if stream is not None and stream.handle is not None:
                self.mem.set_device(self.device)
                stream.synchronize()
            with self._pinned_lock:
                buffers = list(self._pinned.values())
                self._pinned.clear()
            for buf in buffers:
                buf.release()
        finally:
            self.scratch = None
            self.contexts.clear()
            self.engines.clear()
            self.stream = self.pool = None
            try:
                if stream is not None:
                    stream.close()           # frees the arrays still allocated on it
            finally:
                if pool is not None:
                    pool.close()

    # ---- values -------------------------------------------------------------------------------
    def is_device_value(self, value) -> bool:
        """True for a ``DeviceArray``."""
        return isinstance(value, self.mem.DeviceArray)

    def value_info(self, value) -> tuple[np.dtype, int]:
        """(dtype, rank) of a ``DeviceArray``."""
        return value.dtype, value.ndim

    def value_shape(self, value) -> tuple[int, ...]:
        """Shape of a ``DeviceArray`` or numpy array."""
        return value.shape if isinstance(value, self.mem.DeviceArray) else np.asarray(value).shape

    @property
    def pinned_staging(self) -> bool:
        """Always: numpy feeds are uploaded from pinned memory."""
        return True

    def _buffer(self, key):
        """The pinned buffer ``key`` (created on first use); any thread may ask."""
        with self._pinned_lock:
            buf = self._pinned.get(key)
            if buf is None:
                buf = self._pinned[key] = self.mem.PinnedStaging(self.device)
            return buf

    def staging_impl(self, shape: tuple, dtype, slot: int) -> np.ndarray:
        """A pinned host array for ``slot`` (waits until its previous upload has finished); called
        from the preprocessing thread too."""
        self.mem.set_device(self.device)
        return self._buffer(("staging", slot)).array(shape, dtype)

    def _pinned_owner(self, array: np.ndarray):
        addr = array.ctypes.data
        with self._pinned_lock:
            buffers = list(self._pinned.values())
        for buf in buffers:
            if buf.cap and buf.hptr <= addr < buf.hptr + buf.cap:
                return buf
        return None

    def _live(self, value, what: str):
        if not value.alive:
            raise ValueError(f"{what} was freed when the runner was deactivated; upload it again")
        return value

    def _upload(self, array: np.ndarray, key):
        array = np.ascontiguousarray(array)
        dev = self.mem.DeviceArray(array.shape, array.dtype, self.stream)
        owner = self._pinned_owner(array)
        if owner is None:       # pageable memory: stage it through a pinned buffer of our own
            owner = self._buffer(key)
            pinned = owner.array(array.shape, array.dtype)
            pinned[...] = array
            array = pinned
        self.mem.copy_h2d(dev.ptr, array, self.stream)
        owner.mark(self.stream)
        return dev

    def to_device_impl(self, array: np.ndarray):
        """Upload ``array`` (one H2D copy through pinned memory)."""
        self.mem.set_device(self.device)
        return self._upload(array, ("upload",))

    def to_host_impl(self, value):
        """One D2H copy into pinned memory, then a numpy copy the caller owns."""
        self.mem.set_device(self.device)
        self._live(value, "to_host: the value")
        buf = self._buffer(("download",))
        host = buf.array(value.shape, value.dtype)
        self.mem.copy_d2h(host, value.ptr, self.stream)
        buf.mark(self.stream)
        self.stream.synchronize()
        return host.copy()

    def broadcast_impl(self, value, batch: int):
        """Repeat a batch-1 ``DeviceArray`` ``batch`` times with device-to-device copies."""
        self.mem.set_device(self.device)
        self._live(value, "broadcast: the value")
        out = self.mem.DeviceArray((batch,) + value.shape[1:], value.dtype, self.stream)
        self.mem.broadcast_rows(out.ptr, value.ptr, value.nbytes, batch, self.stream)
        return out

    # ---- inference ----------------------------------------------------------------------------
    def infer_impl(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool) -> dict:
        """Bind inputs (uploading numpy ones), size context memory, enqueue, bind/download outputs."""
        self.mem.set_device(self.device)
        ctx = self.contexts[graph]
        held = []                 # device inputs stay referenced until the call is queued
        for name, is_input, dtype in self.io[graph]:
            if not is_input:
                continue
            value = feeds[name]
            if not isinstance(value, self.mem.DeviceArray):
                value = self._upload(np.asarray(value, dtype=dtype), ("in", graph, name))
            elif not value.alive:
                raise ValueError(f"{graph}: input {name!r} was freed when the runner was deactivated")
            elif value.dtype != dtype:
                raise ValueError(f"{graph}: input {name!r} is {value.dtype} on the device, the engine takes {dtype}")
            if not ctx.set_input_shape(name, value.shape):
                lo, _, hi = self.profile(graph).get(name, ([], [], []))
                raise ValueError(f"{graph}: input {name!r} shape {value.shape} is outside the engine's profile "
                                 f"({lo} .. {hi}); rebuild with other min_res/max_res/max_batch")
            ctx.set_tensor_address(name, value.ptr)
            held.append(value)
        # 0 is TensorRT's error value here (NvInferRuntime.h), not "needs nothing": SharedScratch
        # raises then, so the context never keeps a pointer to a buffer an earlier growth freed.
        need = int(ctx.update_device_memory_size_for_shapes())
        try:
            ptr, size = self.scratch.bind(need, int(self.engines[graph].device_memory_size_v2))
        except RuntimeError as exc:
            raise BackendError(f"{graph}: {exc} (shapes {[v.shape for v in held]}); use a smaller batch "
                               f"if the device is out of memory") from None
        if size:
            ctx.set_device_memory(ptr, size)
        outputs = {}
        for name, is_input, dtype in self.io[graph]:
            if is_input:
                continue
            out = self.mem.DeviceArray(tuple(ctx.get_tensor_shape(name)), dtype, self.stream)
            ctx.set_tensor_address(name, out.ptr)
            outputs[name] = out
        if not ctx.execute_async_v3(self.stream.handle):
            raise BackendError(f"TensorRT failed to enqueue {graph}")
        if not host_outputs:
            return outputs
        hosts = {}
        for name, out in outputs.items():
            buf = self._buffer(("out", graph, name))
            hosts[name] = buf.array(out.shape, out.dtype)
            self.mem.copy_d2h(hosts[name], out.ptr, self.stream)
            buf.mark(self.stream)
        self.stream.synchronize()
        return {name: host.copy() for name, host in hosts.items()}
