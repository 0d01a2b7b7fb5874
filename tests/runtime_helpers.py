"""Helpers of the runtime tests: sample photos, encoded image bytes and the PyTorch reference of a
stylization. The tiny exported model and its Stylizer are session fixtures in conftest.py."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
STRIDE = 4          # tiny_stage2: ch_mult [1, 2, 2]
STYLE_SIZE = 32     # the tiny model attends at 128x128 features: keep every image small


def photo(height: int, width: int, index: int = 1, kind: str = "content") -> np.ndarray:
    """A sample photo from assets/, resized (bicubic) to height x width."""
    image = Image.open(ASSETS / kind / f"{index}.jpg").convert("RGB")
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """``array`` (HWC uint8) encoded as ``fmt`` with Pillow save ``options``; returns the bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def torch_stylize(model, content: np.ndarray, style: np.ndarray, content_ratio=1.0, output_ratio=1.0):
    """PyTorch reference: StyleTransfer.transfer + decode on the same [-1, 1] preprocessing as the
    runtime (content reflect-padded on the bottom/right to the stride, style already at its size).
    Returns the decoded float image (H, W, 3) cropped, clipped to [-1, 1]."""
    import torch

    h, w = content.shape[:2]
    hp, wp = -(-h // STRIDE) * STRIDE, -(-w // STRIDE) * STRIDE
    padded = np.pad(content, ((0, hp - h), (0, wp - w), (0, 0)), mode="reflect")

    def tensor(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float().div(127.5).sub(1.0)[None]

    with torch.no_grad():
        _, quant_y, *_ = model.transfer(tensor(padded), tensor(style), content_ratio, output_ratio)
        y = model.decode(quant_y)[0].numpy()
    return np.clip(y[:, :h, :w].transpose(1, 2, 0), -1.0, 1.0)


def to_uint8(y: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 the way the runtime rounds them."""
    return np.rint((y + 1.0) * 127.5).astype(np.uint8)
