"""Loading one image robustly and turning it into a training tensor.

``load_rgb`` applies the EXIF orientation and converts every Pillow mode a dataset is
likely to hold (1, L, LA, P, PA, RGBA, CMYK, YCbCr, 16-bit I;16*, 32-bit I, F) to 8-bit
RGB; transparent images are composited on white. ``resize_and_crop`` scales the shorter
side to ``size`` and crops a ``size`` x ``size`` square (random or centred);
``to_tensor`` gives a float32 CHW tensor in [-1, 1] (0 -> -1, 255 -> +1).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

# One definition of "any image -> 8-bit RGB" for training and inference alike (alpha on white).
from quantart_runtime.images import to_rgb


def _exif_transposed(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block must not discard good pixels
        return image


def load_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Open ``path`` fully (raises on unreadable/truncated files) as upright 8-bit RGB.

    ``draft_size`` lets JPEG decoding shrink by a power of two while keeping both sides
    at least ``draft_size`` (much faster for large photographs; quality unaffected
    since the image is downscaled to that size anyway).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft(image.mode, (draft_size, draft_size))
            image.load()  # raises OSError for truncated data
            upright = _exif_transposed(image)
            rgb = to_rgb(upright)
            if rgb is image:
                rgb = image.copy()  # detach from the closed file
    return rgb


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Scale (bicubic, antialiased) so the shorter side is exactly ``size``."""
    width, height = image.size
    if min(width, height) == size:
        return image
    scale = size / min(width, height)
    new_w = size if width <= height else max(size, round(width * scale))
    new_h = size if height < width else max(size, round(height * scale))
    return image.resize((new_w, new_h), Image.Resampling.BICUBIC)


def crop_box(
    width: int, height: int, size: int, rng: np.random.Generator | None
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a ``size`` square: random if ``rng`` else centred."""
    if rng is None:
        left, top = (width - size) // 2, (height - size) // 2
    else:
        left = int(rng.integers(0, width - size + 1))
        top = int(rng.integers(0, height - size + 1))
    return left, top, left + size, top + size


def resize_and_crop(
    image: Image.Image, size: int | None, rng: np.random.Generator | None = None
) -> Image.Image:
    """Shorter side -> ``size``, then a random (``rng`` given) or centre ``size`` crop.

    ``size=None`` returns the image unchanged.
    """
    if size is None:
        return image
    image = resize_shorter_side(image, size)
    return image.crop(crop_box(*image.size, size, rng))


def augment_crop(
    image: Image.Image, size: int, rng: np.random.Generator, min_scale: float = 1.0, flip: bool = False
) -> Image.Image:
    """Random multi-scale square crop + optional horizontal flip (training augmentation).

    The crop side is drawn uniformly between ``min_scale`` x the shorter side (but at least
    ``size``, so crops are never upscaled) and the whole shorter side, taken at a random
    position of the original image and resized (bicubic) to ``size``; so a 256-pixel image with
    ``size`` 64 gives views from native pixels (64-pixel crops) to the whole image at 1/4 scale.
    With ``flip`` the crop is mirrored left-right with probability 1/2.

    Raises ``ValueError`` for ``min_scale`` outside (0, 1].
    """
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    width, height = image.size
    short = min(width, height)
    low = min(short, max(size, int(round(min_scale * short))))
    side = int(rng.integers(low, short + 1))
    image = image.crop(crop_box(width, height, side, rng))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB image -> float32 tensor (3, H, W) in [-1, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got array of shape {array.shape}")
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)


def load_tensor(
    path: str | os.PathLike, size: int | None, rng: np.random.Generator | None = None,
    min_scale: float = 1.0, flip: bool = False,
) -> torch.Tensor:
    """``load_rgb`` + ``resize_and_crop`` + ``to_tensor`` in one call.

    With ``rng`` and ``min_scale < 1`` or ``flip``, ``augment_crop`` replaces ``resize_and_crop``
    (multi-scale random crops, flips; the image is decoded at full size).
    """
    if rng is not None and size is not None and (min_scale < 1.0 or flip):
        return to_tensor(augment_crop(load_rgb(path), size, rng, min_scale, flip))
    return to_tensor(resize_and_crop(load_rgb(path, draft_size=size), size, rng))
