"""TensorRT backend (`backend="tensorrt"`): strongly typed engines with the fused nearest-code plugin.

Per graph of the chosen precision: verify the ONNX file's sha256, replace each nearest-codebook
subgraph by the quantart::nearest_code plugin (graph_rewrite), then load the engine from the on-disk
cache or build it (strongly typed network, one optimization profile, shared timing cache).
Execution is asynchronous on one CUDA stream through cuda-python: pinned host staging buffers,
device buffers that grow as needed, an event to wait on. Outputs named in `keep_on_device` come back
as DeviceTensor (e.g. a style code reused across many content images) and are accepted as feeds.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..engine_cache import EngineCache
from ..errors import BackendError
from .base import Runner

MIN_TENSORRT = (10, 12)


def _cudart():
    from cuda.bindings import runtime as cudart
    return cudart


def _check(result):
    cudart = _cudart()
    err, *vals = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error: {cudart.cudaGetErrorString(err)[1].decode()}")
    return vals[0] if len(vals) == 1 else tuple(vals)


class DeviceTensor:
    """A tensor in device memory owned by this object (free() or garbage collection releases it)."""

    def __init__(self, shape, dtype, ptr=None):
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = ptr if ptr is not None else _check(_cudart().cudaMalloc(max(self.nbytes, 1)))

    def to_host(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        _check(_cudart().cudaMemcpy(out.ctypes.data, self.ptr, self.nbytes,
                                    _cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost))
        return out

    def free(self):
        if self.ptr:
            _check(_cudart().cudaFree(self.ptr))
            self.ptr = 0

    def __del__(self):
        try:
            self.free()
        except Exception:
            pass


class _Staging:
    """Grow-only device buffer + pinned host buffer for one I/O tensor."""

    def __init__(self):
        self.cap, self.dptr, self.hptr, self.host = 0, 0, 0, None

    def reserve(self, nbytes):
        if nbytes <= self.cap:
            return
        self.release()
        cudart = _cudart()
        self.cap = max(int(nbytes), 256)
        self.dptr = _check(cudart.cudaMalloc(self.cap))
        self.hptr = _check(cudart.cudaHostAlloc(self.cap, cudart.cudaHostAllocDefault))
        self.host = np.ctypeslib.as_array(ctypes.cast(self.hptr, ctypes.POINTER(ctypes.c_uint8)), (self.cap,))

    def release(self):
        if self.cap:
            _check(_cudart().cudaFree(self.dptr))
            _check(_cudart().cudaFreeHost(self.hptr))
        self.cap, self.dptr, self.hptr, self.host = 0, 0, 0, None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_hash() -> str:
    """Engines embed the plugin's PTX: a change to the kernel or the rewrite must invalidate them."""
    here = Path(__file__).resolve().parent
    files = [here.parent / "kernels" / "nearest_code.py", here / "graph_rewrite.py", here / "trt_plugin.py"]
    return _sha256(b"".join(f.read_bytes() for f in files))


class TensorRTRunner(Runner):
    name = "tensorrt"

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        try:
            import tensorrt as trt
        except ImportError as e:
            return False, f"TensorRT is not installed ({e})"
        version = tuple(int(p) for p in trt.__version__.split(".")[:2])
        if version < MIN_TENSORRT:
            return False, f"TensorRT {trt.__version__} is older than {'.'.join(map(str, MIN_TENSORRT))}"
        for mod, what in (("cuda.bindings.runtime", "cuda-python"), ("triton", "triton (builds the plugin PTX)"),
                          ("onnx", "onnx (graph rewrite)")):
            try:
                __import__(mod)
            except ImportError:
                return False, f"{what} is not installed"
        err, count = _cudart().cudaGetDeviceCount()
        if err != _cudart().cudaError_t.cudaSuccess or count == 0:
            return False, "no CUDA device is visible"
        return True, ""

    # ---- life cycle -------------------------------------------------------------------------
    def activate(self) -> None:
        if self.active:
            return
        ok, why = self.is_available()
        if not ok:
            raise BackendError(f"backend 'tensorrt' is not available: {why}")
        import tensorrt as trt

        cudart = _cudart()
        _check(cudart.cudaSetDevice(self.device))
        props = _check(cudart.cudaGetDeviceProperties(self.device))
        self.gpu_name = props.name.decode(errors="replace").rstrip("\x00")
        self.cc = (props.major, props.minor)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.trt_runtime = trt.Runtime(self.logger)
        cache_dir = self.options.get("cache_dir") or os.environ.get("QUANTART_TRT_CACHE") \
            or Path.home() / ".cache" / "quantart" / "tensorrt"
        self.cache = EngineCache(cache_dir)
        self.stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.done = _check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
        graphs = self.manifest.get("graphs", {}).get(self.precision)
        if not graphs:
            raise ValueError(f"model has no {self.precision} graphs")
        self.engines, self.contexts, self.staging = {}, {}, {}
        for graph, entry in graphs.items():
            engine = self._engine(graph, entry)
            self.engines[graph] = engine
            self.contexts[graph] = engine.create_execution_context()
        self.active = True

    def deactivate(self) -> None:
        if not self.active:
            return
        _check(_cudart().cudaStreamSynchronize(self.stream))
        for bufs in self.staging.values():
            for b in bufs.values():
                b.release()
        self.contexts.clear()
        self.engines.clear()
        _check(_cudart().cudaEventDestroy(self.done))
        _check(_cudart().cudaStreamDestroy(self.stream))
        self.active = False

    # ---- engines ----------------------------------------------------------------------------
    def _profile(self, entry) -> dict:
        prof = {**self.manifest.get("profile", {}), **{k: v for k, v in self.options.items() if k in (
            "min_res", "opt_res", "max_res", "max_batch", "opt_batch") and v is not None}}
        stride = int(self.manifest.get("latent_stride", 16))
        res = [int(prof.get("min_res", 16)), int(prof.get("opt_res", 256)), int(prof.get("max_res", 1024))]
        batch = [1, int(prof.get("opt_batch", 1)), int(prof.get("max_batch", 32))]
        shapes = {}
        for inp in entry["inputs"]:
            dims = inp["shape"]
            scale = 1 if inp["name"] == "image" else stride
            triple = []
            for level in range(3):
                shape = []
                for axis, dim in enumerate(dims):
                    if isinstance(dim, int):
                        shape.append(dim)
                    elif axis == 0:
                        shape.append(batch[level])
                    else:
                        shape.append(max(1, res[level] // scale))
                triple.append(shape)
            shapes[inp["name"]] = triple
        return shapes

    def _engine(self, graph, entry):
        import onnx
        import tensorrt as trt

        from .graph_rewrite import replace_nearest_code
        from .trt_plugin import register_nearest_code_plugin

        data = (Path(self.model_dir) / entry["file"]).read_bytes()
        if entry.get("sha256") and _sha256(data) != entry["sha256"]:
            raise ValueError(f"{entry['file']}: sha256 does not match manifest.json")
        model, report = replace_nearest_code(onnx.load_from_string(data))
        if any(r.replaced for r in report):
            driver = _check(_cudart().cudaDriverGetVersion())
            from ..kernels.nearest_code import ptx_version_for_driver
            register_nearest_code_plugin(self.cc[0] * 10 + self.cc[1], ptx_version_for_driver(driver))
        shapes = self._profile(entry)
        fields = {"graph_sha256": _sha256(data), "tensorrt_version": trt.__version__, "gpu_name": self.gpu_name,
                  "compute_capability": f"{self.cc[0]}.{self.cc[1]}", "profile": shapes,
                  "plugin_source": _source_hash(), "graph": graph}
        timing_name = f"timing-{_sha256(f'{trt.__version__}|{self.gpu_name}|{self.cc}'.encode())[:16]}.cache"

        def build() -> bytes:
            builder = trt.Builder(self.logger)
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            parser = trt.OnnxParser(network, self.logger)
            if not parser.parse(model.SerializeToString()):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise RuntimeError(f"TensorRT could not parse {entry['file']}: {errors}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                         int(float(self.options.get("workspace_gb", 4)) * (1 << 30)))
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
            timing = config.create_timing_cache(self.cache.read_blob(timing_name) or b"")
            config.set_timing_cache(timing, False)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise RuntimeError(f"TensorRT failed to build an engine for {entry['file']}")
            self.cache.write_blob(timing_name, bytes(config.get_timing_cache().serialize()))
            return bytes(plan)

        engine, self.cache_status = self.cache.get_or_build(fields, build, self.trt_runtime.deserialize_cuda_engine)
        return engine

    # ---- inference --------------------------------------------------------------------------
    def infer(self, graph: str, feeds: Mapping[str, object], keep_on_device=()) -> dict:
        if not self.active:
            raise RuntimeError("TensorRTRunner.infer called before activate()")
        if graph not in self.engines:
            raise KeyError(f"no {self.precision} graph named {graph!r}; have {sorted(self.engines)}")
        import tensorrt as trt

        cudart = _cudart()
        engine, ctx = self.engines[graph], self.contexts[graph]
        bufs = self.staging.setdefault(graph, {})
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        missing = sorted(set(inputs) - set(feeds))
        if missing:
            raise ValueError(f"{graph}: missing inputs {', '.join(missing)}")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in inputs:
            value = feeds[name]
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if isinstance(value, DeviceTensor):
                if value.dtype != dtype:
                    raise ValueError(f"{graph}: {name} is {value.dtype} on the device, engine wants {dtype}")
                ctx.set_input_shape(name, value.shape)
                ctx.set_tensor_address(name, value.ptr)
                continue
            arr = np.ascontiguousarray(value, dtype=dtype)
            buf = bufs.setdefault(name, _Staging())
            buf.reserve(arr.nbytes)
            buf.host[:arr.nbytes] = arr.reshape(-1).view(np.uint8)
            _check(cudart.cudaMemcpyAsync(buf.dptr, buf.hptr, arr.nbytes, h2d, self.stream))
            ctx.set_input_shape(name, arr.shape)
            ctx.set_tensor_address(name, buf.dptr)
        outputs = {}
        for name in names:
            if name in inputs:
                continue
            shape = tuple(ctx.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if name in keep_on_device:
                out = DeviceTensor(shape, dtype)
                ctx.set_tensor_address(name, out.ptr)
            else:
                out = bufs.setdefault(name, _Staging())
                out.reserve(nbytes)
                ctx.set_tensor_address(name, out.dptr)
            outputs[name] = (out, shape, dtype, nbytes)
        if not ctx.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT failed to enqueue {graph}")
        for name, (out, shape, dtype, nbytes) in outputs.items():
            if not isinstance(out, DeviceTensor):
                _check(cudart.cudaMemcpyAsync(out.hptr, out.dptr, nbytes, d2h, self.stream))
        _check(cudart.cudaEventRecord(self.done, self.stream))
        _check(cudart.cudaEventSynchronize(self.done))
        result = {}
        for name, (out, shape, dtype, nbytes) in outputs.items():
            result[name] = out if isinstance(out, DeviceTensor) else \
                out.host[:nbytes].view(dtype).reshape(shape).copy()
        return result

