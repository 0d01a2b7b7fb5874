"""Per-group GroupNorm statistics of a whole tensor, accumulated in float64 tile by tile.

``NormStats`` gives the (1, C, 1, 1) mean / rstd a streaming GroupNorm segment takes (see
``quantart_runtime.streaming``): from tile cores summed here (``add``), or from the per-row sums a
segment graph computes itself (``add_rows``; ``quantart_export.segment_graphs.row_stats``).
"""
from __future__ import annotations

import numpy as np


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
        self._count(x.shape[1])

    def add_rows(self, ref: np.ndarray, sums: np.ndarray, squares: np.ndarray, width: int) -> None:
        """Accumulate a tile's row statistics as a segment graph gives them (``<out>_ref`` / ``_sum`` /
        ``_sq``): per-row float32 sums of ``x − ref`` and ``(x − ref)²`` (1, C, rows) over rows of ``width``
        core values, around the tile's own reference ``ref`` (1, C, 1, 1). Summed over rows in float64 and
        moved to this accumulator's reference exactly (Σ(x−R) = s + nδ, Σ(x−R)² = q + 2δs + nδ², δ = r − R)."""
        r = np.asarray(ref, np.float32).reshape(self.channels)
        if self._ref is None:
            self._ref = r.copy()
        delta = r.astype(np.float64) - self._ref.astype(np.float64)
        n = sums.shape[-1] * int(width)
        s = np.asarray(sums[0]).sum(axis=1, dtype=np.float64)
        q = np.asarray(squares[0]).sum(axis=1, dtype=np.float64)
        self._s += s + n * delta
        self._q += q + 2 * delta * s + n * delta * delta
        self._count(n)

    def _count(self, n: int) -> None:
        self._n += int(n)
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
