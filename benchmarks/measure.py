"""Timing and memory measurement: percentiles after warm-up, peak RSS sampled on a thread, RSS of
the process, device memory where torch provides it. No torch import here (runtime workers use it)."""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Callable

import numpy as np

try:
    import psutil
except ImportError:  # the bench extra brings psutil; without it, fall back to getrusage
    psutil = None


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    if psutil is not None:
        return psutil.Process(os.getpid()).memory_info().rss / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mb() -> float:
    """Peak RSS over this process's life (getrusage; KiB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024


class PeakRSS:
    """Samples RSS on a background thread while the block runs; `.peak_mb` afterwards."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = None

    def _loop(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self.peak_mb = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())
        return False


def summarize(times_s: list[float], batch: int) -> dict:
    """Latency percentiles (ms) per call and throughput (images/s) from per-call wall times."""
    t = np.asarray(times_s, dtype=np.float64)
    return {
        "iters": int(t.size),
        "p50_ms": float(np.percentile(t, 50) * 1e3),
        "p90_ms": float(np.percentile(t, 90) * 1e3),
        "mean_ms": float(t.mean() * 1e3),
        "min_ms": float(t.min() * 1e3),
        "images_per_s": float(batch * t.size / t.sum()),
    }


def time_calls(fn: Callable[[int], object], warmup: int, iters: int, sync: Callable[[], None] = lambda: None,
               memory: bool = True) -> tuple[list[float], float, float | None]:
    """Run fn(i) `warmup` times (RSS sampled), then `iters` timed times (no sampler running).

    Returns (per-call seconds, first-call seconds, peak RSS MiB during warm-up or None)."""
    first = None
    peak = None
    sampler = PeakRSS() if memory else None
    if sampler is not None:
        sampler.__enter__()
    try:
        for i in range(max(warmup, 1)):
            t0 = time.perf_counter()
            fn(i)
            sync()
            if first is None:
                first = time.perf_counter() - t0
    finally:
        if sampler is not None:
            sampler.__exit__(None, None, None)
            peak = sampler.peak_mb
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        fn(warmup + i)
        sync()
        times.append(time.perf_counter() - t0)
    return times, first, peak
