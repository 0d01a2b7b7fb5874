"""Device memory, pinned host memory and one CUDA stream through cuda-python (NVIDIA's bindings).

Shared by the GPU runners (TensorRT, ONNX Runtime CUDA): nothing here imports TensorRT or
ONNX Runtime, and nothing is imported before a GPU runner activates (``cuda.bindings`` is loaded
lazily). Allocation is stream-ordered (``cudaMallocAsync`` / ``cudaFreeAsync`` on the runner's
stream), so freeing a buffer that queued work still reads is safe, and a grow-only
``PinnedStaging`` buffer waits on its own event before it is overwritten.

Devices: CUDA's current device is per thread. Everything that creates a CUDA object here (stream,
event, pinned buffer) first selects its device (``set_device``), so a worker thread that never
called ``cudaSetDevice`` (the Stylizer's preprocessing thread) still creates a staging buffer's
event in the context of the runner's device, not device 0's (``cudaEventRecord`` needs the event
and the stream in one context). Closing a ``Stream`` frees every device array still allocated on
it, whoever holds a reference (``DeviceArray.alive`` turns false).
"""
from __future__ import annotations

import ctypes
import weakref

import numpy as np


def cudart():
    """The ``cuda.bindings.runtime`` module (``ImportError`` without cuda-python)."""
    from cuda.bindings import runtime

    return runtime


def cudadriver():
    """The ``cuda.bindings.driver`` module (home of ``cuuint64_t``, the value type of the memory-pool
    attributes that ``cudaMemPoolSetAttribute`` takes)."""
    from cuda.bindings import driver

    return driver


def set_device(device: int) -> None:
    """Make ``device`` the calling thread's current device (cheap; needed once per thread)."""
    check(cudart().cudaSetDevice(int(device)))


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
    """A non-blocking CUDA stream on ``device`` plus one event to wait for it; ``arrays`` are the
    device arrays allocated on it (weakly held), freed by ``close``."""

    def __init__(self, device: int):
        rt = cudart()
        set_device(device)
        self.device = int(device)
        self.arrays = weakref.WeakSet()
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
        """Wait for the stream, free the device arrays still allocated on it (references held
        elsewhere, e.g. a cache of style codes, see ``alive`` turn false), then destroy the stream
        and its event (idempotent)."""
        rt = cudart()
        if self.handle is not None:
            try:
                set_device(self.device)
                check(rt.cudaStreamSynchronize(self.handle))
                for arr in list(self.arrays):
                    arr.release()
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
            if stream.handle is None:
                raise RuntimeError("cannot allocate on a closed stream (the runner was deactivated)")
            ptr = check(cudart().cudaMallocAsync(max(self.nbytes, 1), stream.handle))
            self._owns = True
        else:
            self._owns = False
        self.ptr = int(ptr)
        if self._owns:
            stream.arrays.add(self)

    @property
    def alive(self) -> bool:
        """False once the memory was freed (``release``, or its stream was closed)."""
        return bool(self.ptr) and (self._owner is None or self._owner.alive)

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
        """Free the memory (stream-ordered; idempotent). Views keep their owner alive instead.
        Arrays on a closed stream were freed when it closed (``Stream.close``)."""
        ptr, self.ptr = self.ptr, 0
        if self._owns and ptr and self.stream.handle is not None:
            check(cudart().cudaFreeAsync(ptr, self.stream.handle))

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


class PinnedStaging:
    """A grow-only pinned (page-locked, portable: any thread may fill it) host buffer with an event
    marking its last copy.

    ``array(shape, dtype)`` returns a numpy view of the buffer after waiting for the copy that last
    used it, so a buffer is never overwritten while a DMA still reads or writes it. ``device`` is
    the device whose stream will copy it: its event is created there, whichever thread asks.
    """

    def __init__(self, device: int | None = None):
        self.cap, self.hptr, self.event = 0, 0, None
        self.device = device

    def array(self, shape, dtype) -> np.ndarray:
        """A writable numpy view of ``shape``/``dtype`` over the pinned memory (grown as needed)."""
        rt = cudart()
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.event is not None:
            check(rt.cudaEventSynchronize(self.event))
        if nbytes > self.cap:
            self.release()
            if self.device is not None:
                set_device(self.device)      # this thread may never have selected it
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


class SharedScratch:
    """One grow-only device buffer shared as context memory by TensorRT execution contexts that run
    one after another on one stream (``IExecutionContext.set_device_memory``).

    ``bind(need, worst)`` returns the (address, size) to hand to the context for a call that
    needs ``need`` bytes (``update_device_memory_size_for_shapes``). That call returns 0 on error
    (NvInferRuntime.h), so 0 while the engine's worst case ``worst`` is positive raises
    ``RuntimeError`` instead of leaving the context pointing at a buffer an earlier growth freed.
    Growing frees the old buffer stream-ordered, after the queued work that still reads it.
    """

    def __init__(self, stream, array_type=None):
        self.stream = stream
        self.array_type = array_type or DeviceArray
        self.buffer = None
        self.grown = 0

    def bind(self, need: int, worst: int) -> tuple[int, int]:
        """(address, size) of scratch memory for ``need`` bytes (see the class docstring)."""
        need, worst = int(need), int(worst)
        if need <= 0:
            if worst > 0:
                raise RuntimeError(f"TensorRT could not size the context memory for these shapes "
                                   f"(update_device_memory_size_for_shapes returned {need}; the engine "
                                   f"needs up to {worst / 2**20:.1f} MiB)")
            return 0, 0
        if self.buffer is None or self.buffer.nbytes < need:
            old, self.buffer = self.buffer, None
            if old is not None:
                old.release()
            self.buffer = self.array_type((need,), np.uint8, self.stream)
            self.grown += 1
        return self.buffer.ptr, need

    def release(self) -> None:
        """Free the buffer (idempotent)."""
        if self.buffer is not None:
            self.buffer.release()
        self.buffer = None


class DevicePool:
    """The device's default memory pool (where ``cudaMallocAsync`` allocates), kept warm while a
    runner is active: its release threshold is raised to the maximum, so memory freed between calls
    stays in the pool instead of going back to the driver at every synchronization; ``close``
    restores the previous threshold and trims the pool (``cudaMemPoolTrimTo(pool, 0)``), so what the
    runner no longer holds goes back to the device.
    """

    def __init__(self, device: int):
        rt = cudart()
        set_device(device)
        self.device = int(device)
        self.pool = check(rt.cudaDeviceGetDefaultMemPool(self.device))
        attr = rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold
        self.previous = int(check(rt.cudaMemPoolGetAttribute(self.pool, attr)))
        check(rt.cudaMemPoolSetAttribute(self.pool, attr, cudadriver().cuuint64_t(2**64 - 1)))

    def attribute(self, name: str) -> int:
        """A pool attribute by its name without the prefix, e.g. "ReservedMemCurrent", "UsedMemCurrent",
        "ReleaseThreshold" (bytes)."""
        rt = cudart()
        return int(check(rt.cudaMemPoolGetAttribute(self.pool, getattr(rt.cudaMemPoolAttr, f"cudaMemPoolAttr{name}"))))

    def close(self) -> None:
        """Restore the previous release threshold and trim the pool to what is still allocated
        (idempotent). Call after the stream that allocated from it was closed."""
        if self.pool is None:
            return
        rt = cudart()
        try:
            set_device(self.device)
            check(rt.cudaMemPoolSetAttribute(self.pool, rt.cudaMemPoolAttr.cudaMemPoolAttrReleaseThreshold,
                                             cudadriver().cuuint64_t(self.previous)))
            check(rt.cudaMemPoolTrimTo(self.pool, 0))
        finally:
            self.pool = None


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
