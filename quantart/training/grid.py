"""Image grids: rows of NCHW tensors in [−1, 1] side by side, written atomically as PNG."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """CHW float in [−1, 1] → HWC uint8."""
    arr = ((img.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def make_grid(rows: list[list[torch.Tensor]], pad: int = 2) -> np.ndarray:
    """rows of CHW images (each row's images side by side, rows stacked) → HWC uint8, white gaps."""
    if not rows or not rows[0]:
        raise ValueError("make_grid needs at least one image")
    h = max(int(img.shape[-2]) for row in rows for img in row)
    w = max(int(img.shape[-1]) for row in rows for img in row)
    ncol = max(len(row) for row in rows)
    out = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            a = to_uint8(img)
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + a.shape[0], x:x + a.shape[1]] = a
    return out


def save_png(array: np.ndarray, path) -> Path:
    """Write an HWC uint8 image atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_grid(rows: list[list[torch.Tensor]], path, pad: int = 2) -> Path:
    return save_png(make_grid(rows, pad), path)
