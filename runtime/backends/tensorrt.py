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
"""
from __future__ import annotations

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

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        self.cache_status: dict[str, str] = {}
        self.engines: dict = {}
        self.contexts: dict = {}
        self.stream = None
        self.scratch = None
        self._pinned: dict = {}

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """TensorRT >= MIN_TENSORRT, cuda-python, triton and onnx importable, and a CUDA device."""
        try:
            import tensorrt as trt
        except ImportError as e:
            return False, f"TensorRT is not installed ({e})"
        if not tensorrt_version_ok(trt.__version__):
            return False, f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_TENSORRT))}"
        for mod, what in (("cuda.bindings.runtime", "cuda-python"), ("triton", "triton (builds the plugin PTX)"),
                          ("onnx", "onnx (graph rewrite)")):
            try:
                __import__(mod)
            except ImportError:
                return False, f"{what} is not installed"
        rt = cm.cudart()
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
        self.stream = cm.Stream(self.device)
        try:   # keep freed blocks in the pool: per-call allocations then cost no driver call
            pool = cm.check(rt.cudaDeviceGetDefaultMemPool(self.device))
            cm.check(rt.cudaMemPoolSetAttribute(pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold,
                                                rt.cuuint64_t(2**64 - 1)))
        except Exception:
            pass
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

    def _io(self, engine) -> list[tuple[str, bool, np.dtype]]:
        import tensorrt as trt

        out = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            out.append((name, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                        np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
        return out

    def deactivate_impl(self) -> None:
        """Wait for the stream, free buffers, contexts, engines and the stream (partial state too)."""
        stream = self.stream
        try:
            if stream is not None and stream.handle is not None:
                stream.synchronize()
            for buf in self._pinned.values():
                buf.release()
            if self.scratch is not None:
                self.scratch.release()
        finally:
            self._pinned.clear()
            self.scratch = None
            self.contexts.clear()
            self.engines.clear()
            self.stream = None
            if stream is not None:
                stream.close()

    # ---- values -------------------------------------------------------------------------------
    def is_device_value(self, value) -> bool:
        """True for a ``DeviceArray``."""
        return isinstance(value, cm.DeviceArray)

    def value_info(self, value) -> tuple[np.dtype, int]:
        """(dtype, rank) of a ``DeviceArray``."""
        return value.dtype, value.ndim

    def value_shape(self, value) -> tuple[int, ...]:
        """Shape of a ``DeviceArray`` or numpy array."""
        return value.shape if isinstance(value, cm.DeviceArray) else np.asarray(value).shape

    @property
    def pinned_staging(self) -> bool:
        """Always: numpy feeds are uploaded from pinned memory."""
        return True

    def staging_impl(self, shape: tuple, dtype, slot: int) -> np.ndarray:
        """A pinned host array for ``slot`` (waits until its previous upload has finished)."""
        return self._pinned.setdefault(("staging", slot), cm.PinnedStaging()).array(shape, dtype)

    def _pinned_owner(self, array: np.ndarray):
        addr = array.ctypes.data
        for buf in self._pinned.values():
            if buf.cap and buf.hptr <= addr < buf.hptr + buf.cap:
                return buf
        return None

    def _upload(self, array: np.ndarray, key) -> cm.DeviceArray:
        array = np.ascontiguousarray(array)
        dev = cm.DeviceArray(array.shape, array.dtype, self.stream)
        owner = self._pinned_owner(array)
        if owner is None:       # pageable memory: stage it through a pinned buffer of our own
            owner = self._pinned.setdefault(key, cm.PinnedStaging())
            pinned = owner.array(array.shape, array.dtype)
            pinned[...] = array
            array = pinned
        cm.copy_h2d(dev.ptr, array, self.stream)
        owner.mark(self.stream)
        return dev

    def to_device_impl(self, array: np.ndarray) -> cm.DeviceArray:
        """Upload ``array`` (one H2D copy through pinned memory)."""
        return self._upload(array, ("upload",))

    def to_host_impl(self, value: cm.DeviceArray) -> np.ndarray:
        """One D2H copy into pinned memory, then a numpy copy the caller owns."""
        buf = self._pinned.setdefault(("download",), cm.PinnedStaging())
        host = buf.array(value.shape, value.dtype)
        cm.copy_d2h(host, value.ptr, self.stream)
        buf.mark(self.stream)
        self.stream.synchronize()
        return host.copy()

    def broadcast_impl(self, value: cm.DeviceArray, batch: int) -> cm.DeviceArray:
        """Repeat a batch-1 ``DeviceArray`` ``batch`` times with device-to-device copies."""
        out = cm.DeviceArray((batch,) + value.shape[1:], value.dtype, self.stream)
        cm.broadcast_rows(out.ptr, value.ptr, value.nbytes, batch, self.stream)
        return out

    # ---- inference ----------------------------------------------------------------------------
    def infer_impl(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool) -> dict:
        """Bind inputs (uploading numpy ones), size context memory, enqueue, bind/download outputs."""
        ctx = self.contexts[graph]
        held = []                 # device inputs stay referenced until the call is queued
        for name, is_input, dtype in self.io[graph]:
            if not is_input:
                continue
            value = feeds[name]
            if not isinstance(value, cm.DeviceArray):
                value = self._upload(np.asarray(value, dtype=dtype), ("in", graph, name))
            elif value.dtype != dtype:
                raise ValueError(f"{graph}: input {name!r} is {value.dtype} on the device, the engine takes {dtype}")
            if not ctx.set_input_shape(name, value.shape):
                lo, _, hi = self.profile(graph).get(name, ([], [], []))
                raise ValueError(f"{graph}: input {name!r} shape {value.shape} is outside the engine's profile "
                                 f"({lo} .. {hi}); rebuild with other min_res/max_res/max_batch")
            ctx.set_tensor_address(name, value.ptr)
            held.append(value)
        need = int(ctx.update_device_memory_size_for_shapes())
        if need > 0:
            if self.scratch is None or self.scratch.nbytes < need:
                try:
                    self.scratch = cm.DeviceArray((need,), np.uint8, self.stream)
                except RuntimeError as exc:
                    raise BackendError(f"{graph}: TensorRT needs {need / 2**20:.0f} MiB of context memory for "
                                       f"shapes {[v.shape for v in held]} ({exc}); use a smaller batch") from None
            ctx.set_device_memory(self.scratch.ptr, need)
        outputs = {}
        for name, is_input, dtype in self.io[graph]:
            if is_input:
                continue
            out = cm.DeviceArray(tuple(ctx.get_tensor_shape(name)), dtype, self.stream)
            ctx.set_tensor_address(name, out.ptr)
            outputs[name] = out
        if not ctx.execute_async_v3(self.stream.handle):
            raise BackendError(f"TensorRT failed to enqueue {graph}")
        if not host_outputs:
            return outputs
        hosts = {}
        for name, out in outputs.items():
            buf = self._pinned.setdefault(("out", graph, name), cm.PinnedStaging())
            hosts[name] = buf.array(out.shape, out.dtype)
            cm.copy_d2h(hosts[name], out.ptr, self.stream)
            buf.mark(self.stream)
        self.stream.synchronize()
        return {name: host.copy() for name, host in hosts.items()}
