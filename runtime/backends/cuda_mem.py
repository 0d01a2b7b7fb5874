"""Device memory, pinned host memory and one CUDA stream through cuda-python (NVIDIA's bindings).

Shared by the GPU runners (TensorRT, ONNX Runtime CUDA): nothing here imports TensorRT or
ONNX Runtime, and nothing is imported before a GPU runner activates (``cuda.bindings`` is loaded
lazily). Allocation is stream-ordered (``cudaMallocAsync`` / ``cudaFreeAsync`` on the runner's
stream), so freeing a buffer that queued work still reads is safe, and a grow-only
``PinnedStaging`` buffer waits on its own event before it is overwritten.
"""
from __future__ import annotations

import ctypes

import numpy as np


def cudart():
    """The ``cuda.bindings.runtime`` module (``ImportError`` without cuda-python)."""
    from cuda.bindings import runtime

    return runtime


def check(result):
    """Unpack a cuda-python ``(err, *values)`` result; ``RuntimeError`` naming the error otherwise."""
    rt = cudart()
    err, *vals = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error: {rt.cudaGetErrorString(err)[1].decode()}")
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else tuple(vals)


class Stream:
    """A non-blocking CUDA stream on ``device`` plus one event to wait for it."""

    def __init__(self, device: int):
        rt = cudart()
        check(rt.cudaSetDevice(int(device)))
        self.device = int(device)
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
        try:
            self.event = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming))
        except Exception:
            check(rt.cudaStreamDestroy(self.handle))
            raise

    def synchronize(self) -> None:
        """Block until everything queued on the stream has finished."""
        rt = cudart()
        check(rt.cudaEventRecord(self.event, self.handle))
        check(rt.cudaEventSynchronize(self.event))

    def close(self) -> None:
        """Wait for the stream, then destroy it and its event (idempotent)."""
        rt = cudart()
        if self.handle is not None:
            try:
                check(rt.cudaStreamSynchronize(self.handle))
            finally:
                check(rt.cudaEventDestroy(self.event))
                check(rt.cudaStreamDestroy(self.handle))
                self.handle = self.event = None


class DeviceArray:
    """A C-contiguous tensor in device memory, allocated and freed in order on ``stream``.

    ``ptr`` is the device address; ``view(shape)`` gives a prefix of the same memory with another
    shape (no copy); the memory is freed when the owning array is released or collected.
    """

    def __init__(self, shape, dtype, stream: Stream, ptr: int | None = None, owner=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.stream = stream
        self._owner = owner
        if ptr is None:
            ptr = check(cudart().cudaMallocAsync(max(self.nbytes, 1), stream.handle))
            self._owns = True
        else:
            self._owns = False
        self.ptr = int(ptr)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def view(self, shape) -> "DeviceArray":
        """The first ``prod(shape)`` elements as a new shape (shares memory; keeps this array alive)."""
        out = DeviceArray(shape, self.dtype, self.stream, ptr=self.ptr, owner=self)
        if out.nbytes > self.nbytes:
            raise ValueError(f"view {out.shape} is larger than the array {self.shape}")
        return out

    def release(self) -> None:
        """Free the memory (stream-ordered; idempotent). Views keep their owner alive instead."""
        if self._owns and self.ptr and self.stream.handle is not None:
            check(cudart().cudaFreeAsync(self.ptr, self.stream.handle))
        self.ptr = 0

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class PinnedStaging:
    """A grow-only pinned (page-locked, portable: any thread may fill it) host buffer with an event
    marking its last copy.

    ``array(shape, dtype)`` returns a numpy view of the buffer after waiting for the copy that last
    used it, so a buffer is never overwritten while a DMA still reads or writes it.
    """

    def __init__(self):
        self.cap, self.hptr, self.event = 0, 0, None

    def array(self, shape, dtype) -> np.ndarray:
        """A writable numpy view of ``shape``/``dtype`` over the pinned memory (grown as needed)."""
        rt = cudart()
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.event is not None:
            check(rt.cudaEventSynchronize(self.event))
        if nbytes > self.cap:
            self.release()
            self.cap = max(nbytes, 1 << 16)
            self.hptr = check(rt.cudaHostAlloc(self.cap, rt.cudaHostAllocPortable))
            self.event = check(rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming))
        raw = np.ctypeslib.as_array(ctypes.cast(self.hptr, ctypes.POINTER(ctypes.c_uint8)), (self.cap,))
        return raw[:nbytes].view(dtype).reshape(shape)

    def mark(self, stream: Stream) -> None:
        """Record that queued work on ``stream`` uses this buffer (waited on by the next ``array``)."""
        check(cudart().cudaEventRecord(self.event, stream.handle))

    def release(self) -> None:
        """Free the pinned memory and the event (idempotent)."""
        rt = cudart()
        if self.event is not None:
            check(rt.cudaEventSynchronize(self.event))
            check(rt.cudaEventDestroy(self.event))
        if self.hptr:
            check(rt.cudaFreeHost(self.hptr))
        self.cap, self.hptr, self.event = 0, 0, None


def copy_h2d(dst_ptr: int, src: np.ndarray, stream: Stream) -> None:
    """Queue a host->device copy of ``src`` (pinned for a true async DMA) to ``dst_ptr``."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst_ptr, src.ctypes.data, src.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                             stream.handle))


def copy_d2h(dst: np.ndarray, src_ptr: int, stream: Stream) -> None:
    """Queue a device->host copy into ``dst`` (pinned); synchronize the stream before reading it."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ctypes.data, src_ptr, dst.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                             stream.handle))


def copy_d2d(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    """Queue a device->device copy of ``nbytes``."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst_ptr, src_ptr, int(nbytes), rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
                             stream.handle))


def broadcast_rows(dst_ptr: int, src_ptr: int, row_bytes: int, rows: int, stream: Stream, copy=None) -> int:
    """Fill ``rows`` consecutive copies of one ``row_bytes`` item at ``dst_ptr`` on the device, by
    doubling: 1 + ceil(log2(rows)) device-to-device copies, no host involvement.

    ``copy(dst, src, nbytes, stream)`` defaults to ``copy_d2d``. Returns the number of copies queued.
    """
    copy = copy or copy_d2d
    if rows < 1:
        return 0
    copy(dst_ptr, src_ptr, row_bytes, stream)
    done, calls = 1, 1
    while done < rows:
        n = min(done, rows - done)
        copy(dst_ptr + done * row_bytes, dst_ptr, n * row_bytes, stream)
        done += n
        calls += 1
    return calls


def device_memory(device: int) -> tuple[int, int]:
    """(free, total) bytes of device memory."""
    rt = cudart()
    check(rt.cudaSetDevice(int(device)))
    return check(rt.cudaMemGetInfo())
