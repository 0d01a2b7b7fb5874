"""The images a benchmark feeds: the sample pictures in assets/, resized to each resolution.

Everything here is numpy + Pillow (HWC uint8), so both torch and runtime workers share it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
STYLE_SIZE = 256  # the training scale; the style code serves every content size


def _read_rgb(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()


def sample_paths(kind: str, assets: Path = ASSETS) -> list[Path]:
    """assets/content/*.jpg or assets/style/*.jpg, sorted by name."""
    paths = sorted((Path(assets) / kind).glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no sample images in {Path(assets) / kind} (expected *.jpg)")
    return paths


def content_images(size: int, assets: Path = ASSETS) -> list[np.ndarray]:
    """The sample content images (assets/content/*.jpg) as size×size HWC uint8 arrays."""
    return [_read_rgb(p, size) for p in sample_paths("content", assets)]


def style_images(size: int = STYLE_SIZE, assets: Path = ASSETS) -> list[np.ndarray]:
    """The sample style images (assets/style/*.jpg) as size×size HWC uint8 arrays."""
    return [_read_rgb(p, size) for p in sample_paths("style", assets)]


def content_batch(size: int, batch: int, assets: Path = ASSETS) -> list[np.ndarray]:
    """`batch` content images of size×size, cycling through the samples."""
    pool = content_images(size, assets)
    return [pool[i % len(pool)] for i in range(batch)]


def style_variants(style: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` copies of a style image that differ in one low bit each, so that a style cache keyed
    by the image's hash misses on every call (the uncached path) while the work stays the same."""
    out = []
    flat_len = style.size
    for i in range(count):
        v = style.copy()
        flat = v.reshape(-1)
        flat[i % flat_len] ^= 1
        flat[(i // flat_len) % flat_len] ^= 2 if i >= flat_len else 0
        out.append(v)
    return out


def fidelity_pairs(assets: Path = ASSETS, size: int = STYLE_SIZE) -> list[tuple[np.ndarray, np.ndarray]]:
    """(content i, style i) pairs of the sample images at their native 256² scale."""
    contents = content_images(size, assets)
    styles = style_images(STYLE_SIZE, assets)
    n = min(len(contents), len(styles))
    return [(contents[i], styles[i]) for i in range(n)]


def to_model_input(images: list[np.ndarray]) -> np.ndarray:
    """HWC uint8 list → NCHW float32 in [-1, 1] (the training scaling)."""
    x = np.stack(images).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) / 127.5 - 1.0)


def to_uint8(y: np.ndarray) -> list[np.ndarray]:
    """NCHW float in [-1, 1] (not clamped) → list of HWC uint8."""
    y = np.clip(np.rint((np.asarray(y, dtype=np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(im.transpose(1, 2, 0)) for im in y]


def photo(path: Path, width: int, height: int) -> np.ndarray:
    """The image at ``path`` resized (bicubic) to cover width × height and centre-cropped: HWC uint8."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = max(width / im.width, height / im.height)
        im = im.resize((max(width, round(im.width * scale)), max(height, round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - width) // 2, (im.height - height) // 2
        return np.asarray(im.crop((left, top, left + width, top + height)), dtype=np.uint8).copy()
