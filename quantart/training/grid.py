"""Image grids: rows of images side by side (white gaps), written atomically as PNG.

An image is a CHW float tensor in [−1, 1] (training previews) or an HWC uint8 RGB array (runtime outputs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(img) -> np.ndarray:
    """CHW float tensor in [−1, 1] → HWC uint8; an HWC uint8 array is returned unchanged.

    Raises ValueError for anything else.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 array, got {img.dtype} array of shape {img.shape}")
        return img
    import torch

    if not isinstance(img, torch.Tensor) or img.dim() != 3:
        raise ValueError(f"expected a CHW tensor or an HxWx3 uint8 array, got {type(img).__name__}")
    arr = ((img.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def make_grid(rows, pad: int = 2) -> np.ndarray:
    """Rows of images (each row's images side by side, rows stacked) → one HWC uint8 image.

    Cells take the size of the largest image; gaps of ``pad`` pixels are white. Raises ValueError
    for an empty grid.
    """
    if not rows or not any(len(row) for row in rows):
        raise ValueError("make_grid needs at least one image")
    rows = [[to_uint8(img) for img in row] for row in rows]
    h = max(a.shape[0] for row in rows for a in row)
    w = max(a.shape[1] for row in rows for a in row)
    ncol = max(len(row) for row in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, a in enumerate(row):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + a.shape[0], x:x + a.shape[1]] = a
    return out


def save_png(array: np.ndarray, path) -> Path:
    """Write an HWC uint8 image atomically as PNG (quantart_runtime.images.save_image); returns the path."""
    from quantart_runtime.images import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(array, path.with_suffix(".png") if path.suffix.lower() != ".png" else path)


def save_grid(rows, path, pad: int = 2) -> Path:
    """`make_grid` + `save_png`: write the grid of ``rows`` to ``path`` (PNG); returns the path."""
    return save_png(make_grid(rows, pad), path)
