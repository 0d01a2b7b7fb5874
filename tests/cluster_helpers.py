"""Helpers of the Ray cluster tests: smooth random images, encoded bytes, a decompression bomb and a
free TCP port. The tiny exported model is the ``model_dir`` session fixture of conftest.py."""
from __future__ import annotations

import io
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (HWC uint8): 6x6 random colours upsampled bicubically."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC))


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    """``array`` (HWC uint8 RGB) encoded as ``fmt``; returns the bytes."""
    buf = io.BytesIO()
    Image.fromarray(array, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A few hundred bytes claiming width x height pixels (above Pillow's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
