"""PSNR in the project's two named conventions.

- :func:`psnr_uint8`: images as uint8 (or 0..255 values), peak 255 — what a user sees.
- :func:`psnr_unit`: tensors in [-1, 1], peak-to-peak 2 — what the graphs compute.

Identical inputs give ``PSNR_CAP_DB`` (so JSON reports stay finite) unless ``cap=None``.
"""
from __future__ import annotations

import math

import numpy as np

PSNR_CAP_DB = 100.0


def _psnr(a, b, peak: float, cap: float | None) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    return psnr_from_mse(float(np.mean((a - b) ** 2)), peak, cap)


def psnr_from_mse(mse: float, peak: float = 255.0, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR (dB) of a mean squared error already pooled (e.g. over several images) at ``peak``."""
    if mse <= 0.0:
        return float("inf") if cap is None else float(cap)
    value = 10.0 * math.log10(peak * peak / mse)
    return value if cap is None else min(float(cap), value)


def psnr_uint8(a, b, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR (dB) of two uint8 image arrays of equal shape, peak 255. Raises ``ValueError`` on shapes."""
    return _psnr(a, b, 255.0, cap)


def psnr_unit(a, b, cap: float | None = PSNR_CAP_DB) -> float:
    """PSNR (dB) of two arrays in [-1, 1] of equal shape, peak-to-peak 2. Raises ``ValueError``."""
    return _psnr(a, b, 2.0, cap)
