"""Image I/O and the numeric pre/post-processing around the graphs (numpy + Pillow only).

Loading (``load_image``): EXIF orientation is applied; every common Pillow mode becomes 8-bit RGB:
1, L, P, CMYK, YCbCr, RGBX directly; LA, PA, RGBA and palette images with transparency are
**composited on a white background**; 16-bit (I;16*) grey is scaled by 1/257; 32-bit I grey is
taken as 16-bit when it holds values above 255, as 8-bit otherwise; float F grey in [0, 1] is
scaled by 255. Multi-frame files give their first frame. Any file that cannot be used raises
``ImageError`` (a ``ValueError``) with a one-line reason, including images above Pillow's
decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``; the warning Pillow gives between one and
two times the limit is treated as an error too).

Numerics match training: ``x / 127.5 - 1`` maps uint8 to [-1, 1]; outputs are clipped to [-1, 1] and
mapped back with ``rint((y + 1) * 127.5)``. Images are padded to the latent stride by reflection on
the bottom and right edges and cropped back after decoding.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError
from .util.atomic import atomic_open
from .util.errors import one_line

WHITE = (255, 255, 255)
STYLE_MAX_ASPECT = 4   # a style's long side is capped at this many times its requested short side
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                ".tif": "TIFF", ".tiff": "TIFF"}


# -- loading ----------------------------------------------------------------------------------
def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    elif image.mode == "I":
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) / 257.0
    else:  # F
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() <= 1.0:
            values = values * 255.0
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any loaded Pillow image -> 8-bit RGB (alpha composited on white)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        return _high_bit_depth_to_l(image).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return _composite_on_white(image)
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")


def _mpixels(n: float) -> str:
    return f"{n / 1e6:.0f} Mpixels" if n >= 1e6 else f"{n:.0f} pixels"


def _bomb_message(exc) -> str:
    """Pillow raises (or warns) in Image.open, before the image object exists; its message holds
    the pixel count."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{_mpixels(int(found.group(1)))}, " if found else ""
    limit = Image.MAX_IMAGE_PIXELS or 0
    return (f"image is too large ({size}above Pillow's decompression-bomb limit of {_mpixels(limit)}; "
            f"PIL.Image.MAX_IMAGE_PIXELS)")


def load_image(source) -> np.ndarray:
    """A file path or encoded bytes -> (H, W, 3) uint8 RGB array, upright (EXIF applied).

    Raises ``ImageError`` with a one-line reason when the input cannot be used.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageError("empty data (0 bytes)")
        fp = io.BytesIO(data)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError("no such file") from None
        except OSError as exc:
            raise ImageError(f"cannot read: {exc.strerror or exc}") from None
        if path.is_dir():
            raise ImageError("is a directory, not an image")
        if st.st_size == 0:
            raise ImageError("empty file (0 bytes)")
        fp = path
    else:
        raise ImageError(f"expected a file path or encoded bytes, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as image:
                image.load()
                try:
                    upright = ImageOps.exif_transpose(image)
                except Exception:  # a corrupt EXIF block must not discard good pixels
                    upright = image
                rgb = to_rgb(upright)
                array = np.array(rgb, dtype=np.uint8)  # owns its memory (detached from the file)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(_bomb_message(exc)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised or unsupported format)") from None
    except PermissionError:
        raise ImageError("cannot read: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = one_line(exc)
        if "truncated" in text.lower():
            raise ImageError(f"truncated image ({text})") from None
        raise ImageError(f"corrupt or unreadable image ({text})") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"could not convert to RGB (got array of shape {array.shape})")
    return array


def check_image_array(array, what: str = "image") -> np.ndarray:
    """Validate an API input: an (H, W, 3) uint8 array (made C-contiguous)."""
    if not isinstance(array, np.ndarray):
        raise ImageError(f"{what} must be a numpy array (H, W, 3) uint8, got {type(array).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"{what} must be an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"{what} is empty ({array.shape[0]}x{array.shape[1]})")
    return np.ascontiguousarray(array)


# -- saving ------------------------------------------------------------------------------------
def save_image(array: np.ndarray, path, quality: int = 95) -> Path:
    """Write an (H, W, 3) uint8 array atomically; the format follows the extension (.png, .jpg, ...)."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path.name}: unknown image extension {path.suffix!r} "
                         f"(use one of {', '.join(sorted(SAVE_FORMATS))})")
    image = Image.fromarray(check_image_array(array, "output"), mode="RGB")
    options = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    with atomic_open(path) as f:
        image.save(f, format=fmt, **options)
    return path


# -- geometry ----------------------------------------------------------------------------------
def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The smallest multiple of ``stride`` at or above each side."""
    return -(-height // stride) * stride, -(-width // stride) * stride


def check_min_size(height: int, width: int, stride: int) -> None:
    """Raise ``ImageError`` when an image (its ORIGINAL size, before any downscale) is smaller than
    one latent cell."""
    if height < stride or width < stride:
        raise ImageError(f"image is {width}x{height}, smaller than one latent cell ({stride}x{stride})")


def style_size(height: int, width: int, size: int | None, stride: int,
               max_side: int | None = None) -> tuple[int, int]:
    """(H, W) for a style image: shorter side -> ``size`` keeping the aspect ratio (``None`` keeps
    the image's scale); a longer side above ``max_side`` is scaled down to it (the shorter side
    follows); each side then rounded to the nearest multiple of ``stride`` (at least one)."""
    if size is None:
        h, w = float(height), float(width)
    else:
        scale = size / min(height, width)
        h, w = height * scale, width * scale
    if max_side and max(h, w) > max_side:
        cap = max_side / max(h, w)
        h, w = h * cap, w * cap
    return max(stride, int(round(h / stride)) * stride), max(stride, int(round(w / stride)) * stride)


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic (antialiased) resize of an (H, W, 3) uint8 array, as training's data pipeline."""
    if array.shape[:2] == (height, width):
        return array
    image = Image.fromarray(array, mode="RGB").resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image)


def fit_max_side(array: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale so the longer side is at most ``max_side`` (aspect kept); smaller images unchanged."""
    h, w = array.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return array
    scale = max_side / max(h, w)
    return resize(array, max(1, round(h * scale)), max(1, round(w * scale)))


# -- numerics ----------------------------------------------------------------------------------
def preprocess(images: Sequence[np.ndarray], stride: int) -> np.ndarray:
    """(H, W, 3) uint8 images that share one padded size -> float32 (B, 3, Hp, Wp) in [-1, 1].

    Each image is reflect-padded on the bottom/right edges to the latent stride.
    """
    if not images:
        raise ValueError("preprocess: no images")
    hp, wp = padded_size(*images[0].shape[:2], stride)
    batch = np.empty((len(images), 3, hp, wp), dtype=np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if padded_size(h, w, stride) != (hp, wp):
            raise ValueError(f"preprocess: image {i} ({w}x{h}) does not pad to {wp}x{hp}")
        check_min_size(h, w, stride)
        if (h, w) != (hp, wp):
            img = np.pad(img, ((0, hp - h), (0, wp - w), (0, 0)), mode="reflect")
        out = batch[i]
        np.divide(img.transpose(2, 0, 1), np.float32(127.5), out=out, dtype=np.float32)
        np.subtract(out, np.float32(1.0), out=out)
    return batch


def postprocess(batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """float32 (B, 3, Hp, Wp) graph output -> list of (H, W, 3) uint8, cropped to ``sizes``."""
    results = []
    for y, (h, w) in zip(batch, sizes):
        crop = y[:, :h, :w].transpose(1, 2, 0)  # (h, w, 3) view
        out = np.empty((h, w, 3), dtype=np.float32)
        np.clip(crop, -1.0, 1.0, out=out)
        out += 1.0
        out *= 127.5
        np.rint(out, out=out)
        results.append(out.astype(np.uint8))
    return results
