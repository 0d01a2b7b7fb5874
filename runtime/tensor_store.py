"""Where the streaming executor keeps whole-image intermediates, and their GroupNorm statistics.

``TensorStore`` holds each tensor (1, C, H, W) in RAM or, when the plan says so, in a raw file of a
private temporary directory (HWC layout: a tile window is one ``pread``/``pwrite`` per row, never a
memory map, so an ``RLIMIT_AS`` limit sees only the tile buffers). The directory is created on first
use, after checking the free space, and removed by ``close()`` (the executor calls it in ``finally``:
success, error and Ctrl-C). ``NormStats`` accumulates per-group sums and sums of squares in float64 as
tiles are written, and gives the (1, C, 1, 1) mean / rstd a GroupNorm segment takes.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from .errors import ImageTooLarge

TEMP_ENV = "QUANTART_TEMP_DIR"


def temp_parent() -> str:
    """The directory the temporary store goes under: ``$QUANTART_TEMP_DIR`` or the system temp dir."""
    return os.environ.get(TEMP_ENV) or tempfile.gettempdir()


def disk_free(path: str) -> int:
    """Free bytes on the file system of ``path``."""
    return shutil.disk_usage(path).free


class NormStats:
    """Per-group float64 sums of one tensor's values and squares, over the tiles written so far.

    Accumulated per channel around a reference value (the channel's mean in the first tile): the
    deviations are summed, and squared, in float64 accumulators, so a large mean cannot cancel the variance
    (the shifted-data algorithm); ``sum`` / ``sq`` give the per-group sums of values and squares.
    """

    def __init__(self, channels: int, groups: int):
        self.channels, self.groups = int(channels), int(groups)
        self._ref = None
        self._s = np.zeros(self.channels, np.float64)
        self._q = np.zeros(self.channels, np.float64)
        self._n = 0          # values per channel
        self.count = 0       # values per group

    def add(self, tile: np.ndarray) -> None:
        """Accumulate a (1, C, h, w) float32 tile (the core of a tile, every value counted once)."""
        x = np.ascontiguousarray(tile[0], dtype=np.float32).reshape(self.channels, -1)
        if self._ref is None:
            self._ref = x.mean(axis=1, dtype=np.float64).astype(np.float32)
        d = x - self._ref[:, None]
        self._s += d.sum(axis=1, dtype=np.float64)
        self._q += np.square(d, out=d).sum(axis=1, dtype=np.float64)
        self._n += x.shape[1]
        self.count = self._n * (self.channels // self.groups)

    def _grouped(self, v: np.ndarray) -> np.ndarray:
        return v.reshape(self.groups, -1).sum(axis=1)

    @property
    def sum(self) -> np.ndarray:
        """Per-group sums of the values (float64)."""
        ref = np.zeros(self.channels) if self._ref is None else self._ref.astype(np.float64)
        return self._grouped(self._s + self._n * ref)

    @property
    def sq(self) -> np.ndarray:
        """Per-group sums of the squared values (float64)."""
        ref = np.zeros(self.channels) if self._ref is None else self._ref.astype(np.float64)
        return self._grouped(self._q + 2 * ref * self._s + self._n * ref * ref)

    def mean_rstd(self, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean, 1/sqrt(var + eps)) per channel, (1, C, 1, 1) float32 (population variance, as GroupNorm)."""
        n = max(self.count, 1)
        ref = np.zeros(self.channels) if self._ref is None else self._ref.astype(np.float64)
        dev = self._grouped(self._s) / n                       # group mean of (x - ref_c)
        mean = dev + self._grouped(ref * self._n) / n
        # E[(x - m)²] from the per-channel deviations: Σ_c (q_c + 2 (ref_c - m) s_c + n (ref_c - m)²) / n
        per = self.channels // self.groups
        m_c = np.repeat(mean, per)
        off = ref - m_c
        var = np.maximum(self._grouped(self._q + 2 * off * self._s + self._n * off * off) / n, 0.0)
        rstd = 1.0 / np.sqrt(var + eps)
        expand = lambda v: np.repeat(v, per).astype(np.float32).reshape(1, self.channels, 1, 1)  # noqa: E731
        return expand(mean), expand(rstd)


class TensorStore:
    """Named whole-image tensors in RAM or in temporary files (see the module docstring).

    Args: disk_needed: bytes the plan puts on disk at most (checked against the free space before the
    first file); parent: where the temporary directory goes (default ``temp_parent()``).
    """

    def __init__(self, disk_needed: int = 0, parent: str | None = None):
        self.parent = parent or temp_parent()
        self.disk_needed = int(disk_needed)
        self.dir: str | None = None
        self._ram: dict[str, np.ndarray] = {}
        self._files: dict[str, tuple[int, tuple, np.dtype]] = {}
        self.disk_bytes = self.peak_disk_bytes = 0
        self.ram_bytes = self.peak_ram_bytes = 0

    def _open_dir(self) -> str:
        if self.dir is None:
            free = disk_free(self.parent)
            if free < self.disk_needed:
                raise ImageTooLarge(f"streaming needs {self.disk_needed / 2**30:.2f} GiB of temporary disk in "
                                    f"{self.parent}, {free / 2**30:.2f} GiB free (set {TEMP_ENV})")
            self.dir = tempfile.mkdtemp(prefix="quantart-stream-", dir=self.parent)
        return self.dir

    def create(self, name: str, shape: tuple, dtype, on_disk: bool) -> None:
        """Allocate tensor ``name`` (1, C, H, W) in RAM or on disk."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if not on_disk:
            self._ram[name] = np.zeros(shape, dtype)
            self.ram_bytes += nbytes
            self.peak_ram_bytes = max(self.peak_ram_bytes, self.ram_bytes)
            return
        path = os.path.join(self._open_dir(), name.replace("/", "_"))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, nbytes)
        self._files[name] = (fd, tuple(shape), dtype)
        self.disk_bytes += nbytes
        self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)

    def put(self, name: str, array: np.ndarray, on_disk: bool = False) -> None:
        """Store a whole tensor."""
        if not on_disk:
            self._ram[name] = array
            self.ram_bytes += array.nbytes
            self.peak_ram_bytes = max(self.peak_ram_bytes, self.ram_bytes)
            return
        self.create(name, array.shape, array.dtype, True)
        self.write(name, 0, 0, array)

    def shape(self, name: str) -> tuple:
        """The (C, H, W) shape of stored tensor ``name``."""
        return self._ram[name].shape if name in self._ram else self._files[name][1]

    def read(self, name: str, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Window rows [r0, r1), columns [c0, c1) as a contiguous (1, C, h, w) array."""
        if name in self._ram:
            return np.ascontiguousarray(self._ram[name][:, :, r0:r1, c0:c1])
        fd, (_, c, _, w), dtype = self._files[name]
        buf = np.empty((r1 - r0, c1 - c0, c), dtype)
        row = w * c * dtype.itemsize
        for i, r in enumerate(range(r0, r1)):
            n = os.preadv(fd, [memoryview(buf[i]).cast("B")], r * row + c0 * c * dtype.itemsize)
            if n != buf[i].nbytes:
                raise OSError(f"short read from the streaming store ({name})")
        return np.ascontiguousarray(buf.transpose(2, 0, 1))[None]

    def whole(self, name: str) -> np.ndarray:
        """The whole tensor (a view for RAM tensors)."""
        if name in self._ram:
            return self._ram[name]
        _, (_, _, h, w), _ = self._files[name]
        return self.read(name, 0, h, 0, w)

    def write(self, name: str, r0: int, c0: int, tile: np.ndarray) -> None:
        """Write a (1, C, h, w) tile at (r0, c0)."""
        if name in self._ram:
            self._ram[name][:, :, r0:r0 + tile.shape[2], c0:c0 + tile.shape[3]] = tile
            return
        fd, (_, c, _, w), dtype = self._files[name]
        hwc = np.ascontiguousarray(tile[0].transpose(1, 2, 0), dtype=dtype)
        row = w * c * dtype.itemsize
        for i in range(hwc.shape[0]):
            os.pwrite(fd, memoryview(hwc[i]).cast("B"), (r0 + i) * row + c0 * c * dtype.itemsize)

    def free(self, name: str) -> None:
        """Drop tensor ``name`` (its file is deleted at once)."""
        if name in self._ram:
            self.ram_bytes -= self._ram.pop(name).nbytes
        elif name in self._files:
            fd, shape, dtype = self._files.pop(name)
            os.close(fd)
            os.unlink(os.path.join(self.dir, name.replace("/", "_")))
            self.disk_bytes -= int(np.prod(shape)) * dtype.itemsize

    def close(self) -> None:
        """Free everything and remove the temporary directory (idempotent)."""
        for name in list(self._files):
            try:
                os.close(self._files.pop(name)[0])
            except OSError:
                pass
        self._ram.clear()
        self.ram_bytes = self.disk_bytes = 0
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
