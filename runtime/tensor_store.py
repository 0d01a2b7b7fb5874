"""Where the streaming executor keeps whole-image intermediates, and their GroupNorm statistics.

``TensorStore`` holds each tensor (1, C, H, W) in RAM or, when the plan says so, in a raw file of a
private temporary directory (CHW layout, as the graphs take it: a full-width band is one ``pread``/``pwrite``
per channel and needs no transpose; a column window one per channel and row; never a memory map, so an
``RLIMIT_AS`` limit sees only the tile buffers). The directory is created on first use, after checking
the free space, and removed by ``close()`` (the executor calls it in ``finally``: success, error and
Ctrl-C). ``NormStats`` (``norm_stats``, imported here too) accumulates the GroupNorm
statistics as tiles are written.

RAM tensors reuse memory: a freed tensor's buffer goes to a ``BufferPool`` that the next tensor of
(nearly) its size takes, and tile windows are read into per-input scratch buffers, so a step does not
fault in fresh pages for every tensor and tile. The pool holds only what keeps live + pooled within its
cap (the plan's peak store RAM), so the store never holds more than the plan predicted.

Files are reused the same way: a freed file is kept (not unlinked) for the next disk tensor, while live +
kept files stay within the plan's temporary disk, so the kernel overwrites page-cache pages it already has
instead of allocating fresh ones (measured on this kind of VM: 4 GiB into a new file 3.1–4.1 s, over the
same file again 0.9–1.2 s; 36 GiB through three live 4 GiB files: 48–60 s unlinking each, 38 s reusing).
File writes run on one background thread, one tile in flight: past the kernel's dirty-page limit a write
waits for the disk, and the next tile's graph runs meanwhile; a read or free of that tensor waits for it.
"""
from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import ImageTooLarge
from .norm_stats import NormStats  # noqa: F401 (re-exported: its home before norm_stats)

TEMP_ENV = "QUANTART_TEMP_DIR"


def temp_parent() -> str:
    """The directory the temporary store goes under: ``$QUANTART_TEMP_DIR`` or the system temp dir."""
    return os.environ.get(TEMP_ENV) or tempfile.gettempdir()


PREFIX = "quantart-stream-"   # + owner pid + "-" + random: the store's temporary directory
STALE_SECONDS = 6 * 3600      # a directory untouched this long whose owner process is gone is left over


def sweep_stale(parent: str) -> list[str]:
    """Remove stores left behind by killed processes (SIGKILL, an OOM kill: no ``finally`` ran): directories
    ``quantart-stream-<pid>-*`` under ``parent`` whose pid is not a live process here and that nobody has
    touched for ``STALE_SECONDS`` (a live run in another pid namespace changes its directory every step).
    Returns the removed paths."""
    now = time.time()
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        if not entry.name.startswith(PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or now - entry.stat().st_mtime < STALE_SECONDS:
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # exists, not ours to signal
        return True
    return True


def disk_free(path: str) -> int:
    """Free bytes on the file system of ``path``."""
    return shutil.disk_usage(path).free


def fresh_buffer(nbytes: int) -> np.ndarray:
    """A new flat uint8 buffer; large ones straight from an anonymous ``mmap``: numpy advises huge pages
    for its large arrays, and where the kernel then compacts memory on the first touch (THP defrag
    "madvise", seen here) filling 512 MiB took 0.7–1.4 s against 0.2 s for plain pages."""
    if nbytes < SMALL_BUFFER:
        return np.empty(nbytes, np.uint8)
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)


SMALL_BUFFER = 1 << 20
POOL_SLACK = 1 / 16   # a pooled buffer serves a tensor up to this much smaller (the sizes repeat per level)


def _spans(c: int, h: int, w: int, r0: int, r1: int, c0: int, c1: int, itemsize: int):
    """(window index, file offset) of each contiguous run of window rows [r0, r1) x columns [c0, c1) in a
    CHW file of (c, h, w): one per channel for a full-width band, else one per channel and row."""
    for ch in range(c):
        base = ch * h * w
        if c0 == 0 and c1 == w:
            yield (0, ch), (base + r0 * w) * itemsize
        else:
            for i, r in enumerate(range(r0, r1)):
                yield (0, ch, i), (base + r * w + c0) * itemsize


class BufferPool:
    """Freed flat buffers kept for the next tensors of (nearly) their size, at most ``cap`` bytes together
    with the live ones (``give`` is told the live bytes). The streaming executor keeps one across runs,
    as ONNX Runtime keeps its arena: pages handed back to the kernel cost a fresh fault each on the next
    run (on this kind of VM, 0.8 s per 256 MiB measured mid-run, against 0.04 s for reused memory)."""

    def __init__(self, cap: int | None = None):
        self.cap = cap
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()   # a style encoding may stream while a content does (the service)

    @property
    def held_bytes(self) -> int:
        """Bytes of the buffers in the pool."""
        with self._lock:
            return sum(b.nbytes for b in self._free)

    def take(self, nbytes: int) -> np.ndarray:
        """The smallest pooled buffer of ``nbytes`` up to ``POOL_SLACK`` more, else a fresh one."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if nbytes <= b.nbytes <= nbytes * (1 + POOL_SLACK)]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        return fresh_buffer(nbytes)

    def give(self, flat: np.ndarray, live_bytes: int) -> None:
        """Keep ``flat`` while ``live_bytes`` + pooled stay within ``cap`` (small buffers go first)."""
        with self._lock:
            if self.cap is None:
                return
            self._free.append(flat)
            self._trim(self.cap, live_bytes)

    def fit(self, live_bytes: int) -> None:
        """Drop buffers until ``live_bytes`` (grown by a fresh buffer) + pooled fit the cap again."""
        with self._lock:
            if self.cap is not None:
                self._trim(self.cap, live_bytes)

    def trim(self, cap: int | None, live_bytes: int = 0) -> None:
        """Set the cap and drop buffers (smallest first) until ``live_bytes`` + pooled fit it."""
        with self._lock:
            self._trim(cap, live_bytes)

    def _trim(self, cap: int | None, live_bytes: int) -> None:
        self.cap = cap
        self._free.sort(key=lambda b: b.nbytes)
        pooled = sum(b.nbytes for b in self._free)
        while self._free and (cap is None or live_bytes + pooled > cap):
            pooled -= self._free.pop(0).nbytes

    def clear(self) -> None:
        """Drop every pooled buffer."""
        with self._lock:
            self._free.clear()


class TensorStore:
    """Named whole-image tensors in RAM or in temporary files (see the module docstring).

    Args: disk_needed: bytes the plan puts on disk at most (checked against the free space before the
    first file); parent: where the temporary directory goes (default ``temp_parent()``); pool: the
    ``BufferPool`` RAM tensors come from and go back to (default: a private one without a cap, which
    keeps nothing); adopt: keep a whole-tensor tile as it is instead of copying it (False where the tile's
    memory belongs to someone who should get it back at once). ``close()`` leaves the pool's buffers to its
    owner.
    """

    def __init__(self, disk_needed: int = 0, parent: str | None = None, pool: BufferPool | None = None,
                 adopt: bool = True):
        self.parent = parent or temp_parent()
        self.adopt = adopt
        self.disk_needed = int(disk_needed)
        self.pool = pool if pool is not None else BufferPool()
        self.dir: str | None = None
        self._ram: dict[str, np.ndarray] = {}
        self._held: dict[str, np.ndarray | None] = {}   # RAM tensor -> its poolable flat buffer (None: caller's)
        self._scratch: dict[str, np.ndarray] = {}
        self._files: dict[str, tuple[int, tuple, np.dtype]] = {}
        self._paths: dict[int, str] = {}                 # open file descriptor -> its file
        self._spare: list[tuple[int, int]] = []          # freed files kept for reuse: (fd, bytes)
        self.disk_bytes = self.peak_disk_bytes = 0
        self.ram_bytes = self.peak_ram_bytes = 0
        self._writer: ThreadPoolExecutor | None = None
        self._pending = None                             # (tensor, future): the one file write in flight

    # -- RAM buffers ----------------------------------------------------------------------------
    def _hold(self, name: str, array: np.ndarray, flat: np.ndarray | None) -> None:
        """Keep ``array`` as tensor ``name``; ``flat``: the store's own buffer behind it (pooled when freed),
        None for a caller's array (never reused: a source may be the caller's cached style code)."""
        self._ram[name], self._held[name] = array, flat
        self.ram_bytes += self._nbytes(name)
        self.peak_ram_bytes = max(self.peak_ram_bytes, self.ram_bytes)
        self.pool.fit(self.ram_bytes)     # live grew: pooled buffers beyond the cap go

    def _nbytes(self, name: str) -> int:
        """Bytes RAM tensor ``name`` holds: its whole buffer where the store owns one."""
        flat = self._held[name]
        return self._ram[name].nbytes if flat is None else flat.nbytes

    def _drop(self, name: str) -> None:
        """Stop holding RAM tensor ``name`` (its own buffer back to the pool)."""
        self.ram_bytes -= self._nbytes(name)
        self._ram.pop(name)
        flat = self._held.pop(name)
        if flat is not None:
            self.pool.give(flat, self.ram_bytes)

    def scratch(self, key: str, shape: tuple, dtype) -> np.ndarray:
        """A reused contiguous (shape, dtype) array for tile windows (``key``: one per concurrent use)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = self._scratch.get(key)
        if buf is None or buf.nbytes < nbytes:
            if buf is not None:
                self.pool.give(buf, self.ram_bytes)
            buf = self._scratch[key] = self.pool.take(nbytes)
        return buf[:nbytes].view(dtype).reshape(shape)

    # -- files ----------------------------------------------------------------------------------
    def _open_dir(self) -> str:
        if self.dir is None:
            free = disk_free(self.parent)
            if free < self.disk_needed:
                raise ImageTooLarge(f"streaming needs {self.disk_needed / 2**30:.2f} GiB of temporary disk in "
                                    f"{self.parent}, {free / 2**30:.2f} GiB free (set {TEMP_ENV})")
            sweep_stale(self.parent)
            self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=self.parent)
        return self.dir

    # -- tensors --------------------------------------------------------------------------------
    def create(self, name: str, shape: tuple, dtype, on_disk: bool) -> None:
        """Allocate tensor ``name`` (1, C, H, W) in RAM or on disk (contents undefined until written)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if not on_disk:
            buf = self.pool.take(nbytes)
            self._hold(name, buf[:nbytes].view(dtype).reshape(shape), buf)
            return
        fd = self._spare_file(nbytes)
        if fd is None:
            path = os.path.join(self._open_dir(), name.replace("/", "_"))
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._paths[fd] = path
        os.ftruncate(fd, nbytes)
        self._files[name] = (fd, tuple(shape), dtype)
        self.disk_bytes += nbytes
        self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes + self.spare_bytes)

    @property
    def spare_bytes(self) -> int:
        """Bytes of the freed files kept for reuse."""
        return sum(n for _, n in self._spare)

    def _spare_file(self, nbytes: int) -> int | None:
        """A kept file for a new tensor of ``nbytes`` (the closest in size), or None; kept files that would
        take the disk past ``disk_needed`` with the new one go first."""
        if not self._spare:
            return None
        best = min(range(len(self._spare)), key=lambda i: (abs(self._spare[i][1] - nbytes), i))
        fd, _ = self._spare.pop(best)
        self._trim_spare(self.disk_needed - self.disk_bytes - nbytes)
        return fd

    def _trim_spare(self, room: int) -> None:
        """Delete kept files (smallest first) until they take at most ``room`` bytes."""
        self._spare.sort(key=lambda f: f[1])
        kept = self.spare_bytes
        while self._spare and kept > max(room, 0):
            fd, nbytes = self._spare.pop(0)
            kept -= nbytes
            self._unlink(fd)

    def _unlink(self, fd: int) -> None:
        os.close(fd)
        os.unlink(self._paths.pop(fd))

    def put(self, name: str, array: np.ndarray, on_disk: bool = False) -> None:
        """Store a whole tensor."""
        if not on_disk:
            self._hold(name, array, None)
            return
        self.create(name, array.shape, array.dtype, True)
        self.write(name, 0, 0, array)

    def shape(self, name: str) -> tuple:
        """The (C, H, W) shape of stored tensor ``name``."""
        return self._ram[name].shape if name in self._ram else self._files[name][1]

    def read(self, name: str, r0: int, r1: int, c0: int, c1: int, scratch: str | None = None) -> np.ndarray:
        """Window rows [r0, r1), columns [c0, c1) as a contiguous (1, C, h, w) array: a view where the
        window is contiguous in RAM, else a copy (into the reused ``scratch`` buffer when given: valid
        until the next read with that key)."""
        if name in self._ram:
            window = self._ram[name][:, :, r0:r1, c0:c1]
            if window.flags.c_contiguous:
                return window
            out = self.scratch(scratch, window.shape, window.dtype) if scratch else np.empty_like(window)
            np.copyto(out, window)
            return out
        self.wait(name)
        fd, (_, c, h, w), dtype = self._files[name]
        shape = (1, c, r1 - r0, c1 - c0)
        out = self.scratch(scratch, shape, dtype) if scratch else np.empty(shape, dtype)
        for index, offset in _spans(c, h, w, r0, r1, c0, c1, dtype.itemsize):
            view = memoryview(out[index]).cast("B")
            if os.preadv(fd, [view], offset) != view.nbytes:
                raise OSError(f"short read from the streaming store ({name})")
        return out

    def whole(self, name: str) -> np.ndarray:
        """The whole tensor (a view for RAM tensors)."""
        if name in self._ram:
            return self._ram[name]
        _, (_, _, h, w), _ = self._files[name]
        return self.read(name, 0, h, 0, w)

    def write(self, name: str, r0: int, c0: int, tile: np.ndarray) -> None:
        """Write a (1, C, h, w) tile at (r0, c0); a RAM tensor's one whole tile is kept as it is (the caller
        hands it over: a fresh array from the graph)."""
        if name in self._ram:
            held = self._ram[name]
            if self.adopt and (r0, c0) == (0, 0) and tile.shape == held.shape and tile.dtype == held.dtype:
                # the whole tensor in one tile: keep the graph's output itself, no copy
                self._drop(name)
                whole = tile.flags.c_contiguous and tile.flags.writeable
                self._hold(name, tile, tile.reshape(-1).view(np.uint8) if whole else None)
                return
            held[:, :, r0:r0 + tile.shape[2], c0:c0 + tile.shape[3]] = tile
            return
        # files: written by one background thread while the next tile computes (a page-cache write past
        # the kernel's dirty limit waits for the disk); one write in flight at most, its tile the previous
        # graph output, which the caller holds until the next graph call anyway
        self.wait()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="quantart-store")
        self._pending = (name, self._writer.submit(self._write_file, self._files[name], r0, c0, tile))

    @staticmethod
    def _write_file(entry: tuple, r0: int, c0: int, tile: np.ndarray) -> None:
        fd, (_, c, h, w), dtype = entry
        r1, c1 = r0 + tile.shape[2], c0 + tile.shape[3]
        for index, offset in _spans(c, h, w, r0, r1, c0, c1, dtype.itemsize):
            view = memoryview(np.ascontiguousarray(tile[index])).cast("B")
            if os.pwrite(fd, view, offset) != view.nbytes:
                raise OSError("short write to the streaming store (disk full?)")

    def wait(self, name: str | None = None) -> None:
        """Finish the file write in flight (only when it is to tensor ``name``, if given); its error
        raises here."""
        if self._pending is not None and (name is None or self._pending[0] == name):
            future, self._pending = self._pending[1], None
            future.result()

    def free(self, name: str) -> None:
        """Drop tensor ``name`` (its buffer to the pool, its file kept for the next disk tensor while the
        plan's disk holds it, else deleted at once)."""
        if name in self._ram:
            self._drop(name)
        elif name in self._files:
            self.wait(name)
            fd, shape, dtype = self._files.pop(name)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self.disk_bytes -= nbytes
            self._spare.append((fd, nbytes))          # kept for the next disk tensor, within disk_needed
            self._trim_spare(self.disk_needed - self.disk_bytes)

    def close(self) -> None:
        """Free everything (RAM tensors' own buffers back to the pool) and remove the temporary directory
        (idempotent; a write still in flight is finished first, its error dropped: nothing reads it)."""
        if self._pending is not None:
            try:
                self.wait()
            except OSError:
                pass
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        fds = [self._files.pop(name)[0] for name in list(self._files)] + [fd for fd, _ in self._spare]
        self._spare.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._paths.clear()
        for name in list(self._ram):
            self._drop(name)
        for buf in self._scratch.values():
            self.pool.give(buf, 0)
        self._scratch.clear()
        self.ram_bytes = self.disk_bytes = 0
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
