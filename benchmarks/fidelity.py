"""Fidelity of a backend against torch FP32 on the sample pairs: PSNR (dB) of the uint8 images and
agreement (%) of the SGA output codebook tokens."""
from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # identical images: reported as this, so the JSON stays finite


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR over all pixels of two uint8 image stacks (peak 255)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * np.log10(255.0**2 / mse))


def token_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Percentage of equal codebook indices."""
    if a.shape != b.shape:
        raise ValueError(f"token agreement: shapes differ {a.shape} vs {b.shape}")
    return float(np.mean(a == b) * 100.0)


def compare(reference_npz, candidate_npz) -> dict:
    """{psnr_db, token_agreement_pct, pairs} of a worker's fidelity outputs against the reference."""
    with np.load(reference_npz) as ref, np.load(candidate_npz) as cand:
        return {"psnr_db": psnr_db(ref["images"], cand["images"]),
                "token_agreement_pct": token_agreement(ref["tokens"], cand["tokens"]),
                "pairs": int(ref["images"].shape[0])}
