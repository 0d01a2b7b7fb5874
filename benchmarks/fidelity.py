"""Fidelity of a backend against torch FP32 on the sample pairs: PSNR (dB) of the uint8 images and
agreement (%) of the SGA output codebook tokens."""
from __future__ import annotations

import numpy as np

from quantart_runtime.util import PSNR_CAP_DB, psnr_uint8

__all__ = ["PSNR_CAP_DB", "compare", "token_agreement"]


def token_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Percentage (0..100) of equal codebook indices in ``a`` and ``b``; ``ValueError`` if shapes differ."""
    if a.shape != b.shape:
        raise ValueError(f"token agreement: shapes differ {a.shape} vs {b.shape}")
    return float(np.mean(a == b) * 100.0)


def compare(reference_npz, candidate_npz) -> dict:
    """Compare a worker's fidelity outputs (npz with ``images`` uint8 and ``tokens``) with the reference's.

    Returns ``{psnr_db, token_agreement_pct, pairs}`` (PSNR of the uint8 images, peak 255, capped at
    ``PSNR_CAP_DB``). Raises ``ValueError`` when the shapes differ, ``OSError`` on unreadable files."""
    with np.load(reference_npz) as ref, np.load(candidate_npz) as cand:
        return {"psnr_db": psnr_uint8(ref["images"], cand["images"]),
                "token_agreement_pct": token_agreement(ref["tokens"], cand["tokens"]),
                "pairs": int(ref["images"].shape[0])}
