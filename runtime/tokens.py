"""Tokens: the nearest codebook rows of a latent, and token agreement that forgives near-ties
(numpy only; the export's verification and the runtime's precision gate both judge with these)."""
from __future__ import annotations

import numpy as np

TIE_REL = 1e-5  # a near-tie: the two codes' squared distances differ by ≤ TIE_REL · (‖z‖² + ‖e‖²)


def nearest_codes(latent: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Nearest codebook rows of a (N, D, h, w) latent -> (N, h, w) int64 (float64, lowest index on ties)."""
    n, d, h, w = latent.shape
    z = latent.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, d)
    e = codebook.astype(np.float64)
    scores = (e * e).sum(axis=1)[None, :] - 2.0 * (z @ e.T)
    return scores.argmin(axis=1).reshape(n, h, w).astype(np.int64)


def tie_tolerant_agreement(ours: np.ndarray, ref: np.ndarray, latent: np.ndarray, codebook: np.ndarray,
                           rel: float = TIE_REL) -> tuple[float, int, float]:
    """Token agreement that forgives near-ties.

    A token that differs from the reference still agrees when it is a near-tie. For the reference's
    continuous latent z (``latent``: B, D, h, w), the two codes' squared distances differ by at most
    ``rel`` · (‖z‖² + ‖e_ref‖²). FP32 rounding, in torch or in ONNX Runtime, may break such a tie either way.
    ``ours`` / ``ref``: token indices (B, h, w); ``codebook``: (n_codes, D).
    Returns (agreement 0..1, near-ties forgiven, the largest relative gap among the differing tokens).
    """
    same = ours == ref
    if same.all():
        return 1.0, 0, 0.0
    z = latent.transpose(0, 2, 3, 1)[~same].astype(np.float64)
    e = codebook.astype(np.float64)
    e_ours, e_ref = e[ours[~same]], e[ref[~same]]
    gap = np.abs(((z - e_ours) ** 2).sum(1) - ((z - e_ref) ** 2).sum(1)) / ((z ** 2).sum(1) + (e_ref ** 2).sum(1))
    ties = int((gap <= rel).sum())
    return float((same.sum() + ties) / same.size), ties, float(gap.max())
