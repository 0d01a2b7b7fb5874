"""The GPU runners' host-side logic on the CPU, up to the CUDA / TensorRT call (no TensorRT here).

* TensorRTRunner's buffer table, staging, uploads, context-memory sizing and deactivation run for
  real with plain host memory standing where device memory stands (``HostMem``: the same
  interface as ``cuda_mem``; copies are memmoves). What needs a GPU is benchmarks/device_check.sh.
* The engine cache key (``trt_engine.EngineKeys``) of a real exported model: plugin-free graphs
  need no PTX, an architecture outside the kernel's table is a BackendError naming the supported
  GPUs, and a cache hit needs neither onnx nor Triton (checked in a child where both are blocked).
* ONNX Runtime asked for CUDA on this CPU-only onnxruntime: a BackendError naming what it got.
"""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from quantart_runtime.backends import cuda_mem as cm
from quantart_runtime.backends.tensorrt import TensorRTRunner
from quantart_runtime.errors import BackendError


# ---- host memory in the shape of cuda_mem --------------------------------------------------------
class HostStream:
    def __init__(self, device):
        self.device, self.handle, self.arrays = device, 1, weakref.WeakSet()

    def synchronize(self):
        pass

    def close(self):
        for arr in list(self.arrays):
            arr.release()
        self.handle = None


class HostArray:
    def __init__(self, shape, dtype, stream, ptr=None, owner=None):
        self.shape, self.dtype, self.stream, self._owner = tuple(shape), np.dtype(dtype), stream, owner
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if ptr is None:
            if stream.handle is None:
                raise RuntimeError("cannot allocate on a closed stream")
            self._mem = np.zeros(max(self.nbytes, 1), np.uint8)
            ptr = self._mem.ctypes.data
            stream.arrays.add(self)
        self.ptr = ptr

    ndim = property(lambda self: len(self.shape))
    alive = property(lambda self: bool(self.ptr) and (self._owner is None or self._owner.alive))

    def view(self, shape):
        return HostArray(shape, self.dtype, self.stream, ptr=self.ptr, owner=self)

    def release(self):
        self.ptr = 0
        self._mem = None


class HostPinned:
    def __init__(self, device=None):
        self.device, self.cap, self.hptr, self._mem = device, 0, 0, None

    def array(self, shape, dtype):
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > self.cap:
            self.release()
            self._mem = np.zeros(max(nbytes, 1 << 16), np.uint8)
            self.cap, self.hptr = self._mem.size, self._mem.ctypes.data
        return self._mem[:nbytes].view(dtype).reshape(shape)

    def mark(self, stream):
        pass

    def release(self):
        self.cap, self.hptr, self._mem = 0, 0, None


class HostPool:
    def __init__(self, device):
        self.closed = False

    def close(self):
        self.closed = True


def _memmove(dst, src, nbytes, stream=None):
    ctypes.memmove(dst, src, nbytes)


def host_mem(calls):
    return SimpleNamespace(
        Stream=HostStream, DeviceArray=HostArray, PinnedStaging=HostPinned, DevicePool=HostPool,
        SharedScratch=lambda stream: cm.SharedScratch(stream, HostArray),
        set_device=lambda device: calls.append((threading.current_thread().name, device)),
        copy_h2d=lambda dst, src, stream: _memmove(dst, src.ctypes.data, src.nbytes),
        copy_d2h=lambda dst, src, stream: _memmove(dst.ctypes.data, src, dst.nbytes),
        broadcast_rows=lambda dst, src, row, rows, stream: cm.broadcast_rows(dst, src, row, rows, stream, _memmove))


@pytest.fixture()
def runner():
    calls = []
    r = TensorRTRunner("model", {"graphs": {"fp32": {}}}, device=3)
    r.mem = host_mem(calls)
    r.start_memory()
    r.active = True           # no engines: only the data path below the TensorRT calls runs
    r.device_calls = calls
    yield r
    r.deactivate()


def test_staging_in_a_worker_while_uploading(runner):
    """Item 1: the preprocessing thread adds staging buffers to the table while the caller's
    thread looks up upload owners in it (``dictionary changed size during iteration`` before)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors, n = [], 3000

    def worker():
        try:
            for i in range(n):
                buf = runner.staging((4, 8), np.float32, slot=i)     # a new table entry each time
                buf[...] = i
        except Exception as exc:      # pragma: no cover - the failure being tested for
            errors.append(exc)

    t = threading.Thread(target=worker, name="quantart-preprocess")
    try:
        t.start()
        for i in range(n):
            x = np.full((2, 3), i, np.float32)
            dev = runner.to_device(x)                               # pageable: searches the table
            np.testing.assert_array_equal(runner.to_host(dev), x)
            if i % 50 == 0:
                staged = runner.staging((2, 3), np.float32, slot=-1)
                staged[...] = -i
                assert runner._pinned_owner(staged) is not None     # pinned: uploaded in place
                np.testing.assert_array_equal(runner.to_host(runner.to_device(staged)), -x)
    finally:
        t.join()
        sys.setswitchinterval(old)
    assert not errors, errors
    # Item 2: the worker selected the runner's device before making its buffers
    assert ("quantart-preprocess", 3) in runner.device_calls
    assert {buf.device for buf in runner._pinned.values()} == {3}


def test_deactivate_frees_arrays_still_referenced(runner):
    """Item 7: device values held elsewhere (the Stylizer's cache of style codes) are freed by
    deactivate, and feeding one afterwards is a clear error."""
    style = runner.to_device(np.ones((1, 4, 2, 2), np.float32))
    batch = runner.broadcast(style, 5)
    view = batch.view((5, 16))
    np.testing.assert_array_equal(runner.to_host(batch), np.ones((5, 4, 2, 2), np.float32))
    pool = runner.pool
    runner.deactivate()
    assert not style.alive and not batch.alive and not view.alive and pool.closed
    assert runner.stream is None and not runner._pinned
    runner.start_memory()
    runner.active = True
    with pytest.raises(ValueError, match="freed when the runner was deactivated"):
        runner.broadcast(style, 2)
    with pytest.raises(ValueError, match="freed when the runner was deactivated"):
        runner.to_host(view)


def test_context_memory_zero_is_an_error():
    """Item 6: update_device_memory_size_for_shapes returns 0 on error (NvInferRuntime.h)."""
    stream = HostStream(0)
    scratch = cm.SharedScratch(stream, HostArray)
    ptr, size = scratch.bind(1000, 4000)
    assert size == 1000 and ptr == scratch.buffer.ptr
    assert scratch.bind(500, 4000) == (ptr, 500) and scratch.grown == 1       # reused
    old = scratch.buffer
    ptr2, _ = scratch.bind(3000, 4000)
    assert scratch.grown == 2 and not old.alive and ptr2 == scratch.buffer.ptr  # the old one is freed
    with pytest.raises(RuntimeError, match="returned 0"):
        scratch.bind(0, 4000)
    assert scratch.bind(0, 0) == (0, 0)          # an engine that needs no context memory at all


# ---- ONNX Runtime provider check ------------------------------------------------------------------
def test_ort_cuda_fallback_is_an_error(model_dir):
    """Item 4: asked for CUDA, onnxruntime (here CPU-only) starts a CPU session: BackendError."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    from quantart_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from quantart_runtime.manifest import load_manifest

    runner = OnnxRuntimeRunner(model_dir, load_manifest(model_dir), providers=["CUDAExecutionProvider"])
    # onnxruntime's own warning of the fallback is what this error replaces
    with pytest.raises(BackendError) as exc, pytest.warns(UserWarning, match="CUDAExecutionProvider"):
        runner.activate()
    msg = str(exc.value)
    assert "could not start CUDAExecutionProvider" in msg and "runs on CPUExecutionProvider" in msg
    assert "\n" not in msg and not runner.active and not runner.sessions


# ---- engine cache keys ----------------------------------------------------------------------------
def _keys(model_dir, cache_dir, cc=(9, 0)):
    from quantart_runtime.backends.trt_engine import BUILDER_FLAGS, EngineKeys
    from quantart_runtime.engine_cache import EngineCache
    from quantart_runtime.manifest import load_manifest

    return EngineKeys(model_dir, load_manifest(model_dir), "fp32", EngineCache(cache_dir),
                      tensorrt_version="10.13.0", gpu_name="NVIDIA H200", compute_capability=cc,
                      driver_version=12080, workspace_bytes=1 << 30, builder_flags=list(BUILDER_FLAGS))


def test_keys_need_ptx_only_for_plugin_graphs(model_dir, tmp_path):
    """Item 3: content encoder and decoder have no nearest-code subgraph: no PTX, any GPU; the
    style encoder and SGA need the plugin: an unsupported GPU is a BackendError naming the supported ones."""
    pytest.importorskip("onnx")
    pytest.importorskip("triton")
    keys = _keys(model_dir, tmp_path)
    fields = {g: keys.fields(g) for g in ("content_encoder", "style_encoder", "sga", "decoder")}
    assert fields["content_encoder"]["ptx_version"] == 0 and fields["decoder"]["triton_version"] == ""
    assert fields["sga"]["ptx_version"] > 0 and fields["style_encoder"]["plugin_source"]
    t4 = _keys(model_dir, tmp_path, cc=(7, 5))
    assert t4.fields("decoder")["ptx_version"] == 0
    with pytest.raises(BackendError) as exc:
        t4.fields("sga")
    msg = str(exc.value)
    assert "sm_75" in msg and "sm_90 (H100/H200/GH200)" in msg and "sm_100 (B200" in msg and "\n" not in msg


CHILD = """
import json, sys
sys.modules["triton"] = None          # importing them now raises ImportError
sys.modules["onnx"] = None
sys.path.insert(0, sys.argv[3])
from test_trt_runner_cpu import _keys
keys = _keys(sys.argv[1], sys.argv[2])
def build():
    raise AssertionError("a cache hit must not build")
status = {g: keys.cache.get_or_build(keys.fields(g), build, lambda plan: plan)[1]
          for g in ("content_encoder", "style_encoder", "sga", "decoder")}
loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("triton", "onnx"))
print(json.dumps({"status": status, "loaded": loaded}))
"""


def test_cache_hit_without_onnx_or_triton(model_dir, tmp_path):
    """Item 8: the key of a cached engine is computed with onnx and Triton blocked from import."""
    pytest.importorskip("onnx")
    pytest.importorskip("triton")
    keys = _keys(model_dir, tmp_path)
    for g in ("content_encoder", "style_encoder", "sga", "decoder"):
        assert keys.cache.get_or_build(keys.fields(g), lambda g=g: f"PLAN-{g}".encode(), lambda p: p)[1] == "built"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(tmp_path), str(__import__("pathlib")
                          .Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child == {"status": dict.fromkeys(("content_encoder", "style_encoder", "sga", "decoder"), "hit"),
                     "loaded": []}
    # without the records a miss says what to install
    for blob in tmp_path.glob("plugin-*.json"):
        blob.unlink()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), str(tmp_path), str(__import__("pathlib")
                          .Path(__file__).parent)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "Triton is not installed" in proc.stderr
