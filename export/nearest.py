"""The one nearest-codebook subgraph every exported graph uses (see docs/model_format.md).

Written so that torch.onnx emits a recognisable FP32 pattern: MatMul → Mul → Sub → ArgMin → Gather,
which the TensorRT backend swaps for its fused kernel. The exporter's optimizer folds the constant
Transpose(E) into an initializer (Eᵀ, shape (D, K)) and sum(E*E, 1) into e_sq (K,); E itself is the
Gather's data initializer; the Gather's indices are Reshape(idx, [-1]) (index_select's no-op
adapter on the 1-D ArgMin output).
"""
from __future__ import annotations

import torch


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, ratio: torch.Tensor | float | None = None):
    """Quantize latents (B, D, h, w) to their nearest codebook rows.

    Returns (quantized (B, D, h, w), indices (B, h, w) int64). Computed in FP32 whatever z's dtype;
    with `ratio`, the quantized latent is fused: ratio * q(z) + (1 - ratio) * z (the paper's
    discrete-continuous fusion); the result is cast back to z's dtype.
    """
    b, d, h, w = z.shape
    zf = z.float().permute(0, 2, 3, 1).reshape(-1, d)
    e = codebook.float()
    e_sq = (e * e).sum(dim=1)
    scores = e_sq - torch.matmul(zf, e.t()) * 2.0
    idx = torch.argmin(scores, dim=1)
    codes = torch.index_select(e, 0, idx)  # Gather(E, idx, axis=0)
    if ratio is not None:
        codes = ratio * codes + (1.0 - ratio) * zf
    q = codes.reshape(b, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
    return q, idx.reshape(b, h, w)
