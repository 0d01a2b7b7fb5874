"""Two simple measures of a style transfer result (numpy + Pillow, no torch): does the result keep the
content's structure, and does it take the style's colours?

Both work on images resized (Pillow bicubic) to 128×128, so images of any size compare:

- **structure** — SSIM of luminance between content and result, over non-overlapping 8×8 blocks
  (uniform weights, no Gaussian window): luminance Y = 0.299 R + 0.587 G + 0.114 B in [0, 255], per block
  SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)) with population (co)variances,
  C1 = (0.01·255)², C2 = (0.03·255)²; the mean over the 256 blocks. 1 = identical luminance; unrelated
  photographs score about 0.1.
- **palette gain** — with d the Hellinger distance between 8×8×8-bin RGB histograms (each channel cut into
  8 bins of 32 levels, normalised to sum 1; d(p, q) = sqrt(1 − Σ sqrt(p q)) in [0, 1]):
  gain = (d(content, style) − d(result, style)) / d(content, style). 1 = the result has the style's colour
  distribution, 0 = no closer to it than the content, negative = further away.

Images are HWC uint8 RGB arrays (as `quantart_runtime.load_image` returns) or PIL images.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

SIZE = 128          # both metrics compare images at SIZE × SIZE (bicubic)
BLOCK = 8           # SSIM block side
BINS = 8            # histogram bins per RGB channel
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2
LUMA = np.array([0.299, 0.587, 0.114])


def _rgb(image, size: int = SIZE) -> np.ndarray:
    """HWC uint8 RGB (array or PIL image) → size × size × 3 uint8, resized with Pillow bicubic."""
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {array.dtype} array of shape {array.shape}")
        pil = Image.fromarray(array)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def luminance(image, size: int = SIZE) -> np.ndarray:
    """BT.601 luma (float64, [0, 255]) of ``image`` at size × size."""
    return _rgb(image, size).astype(np.float64) @ LUMA


def structure_ssim(content, result, size: int = SIZE, block: int = BLOCK) -> float:
    """Mean SSIM of luminance over non-overlapping block × block blocks at size × size (see the module doc).

    Returns a float in [−1, 1]; 1.0 for identical images. Raises ValueError for a non-RGB-uint8 input or a
    size that is not a multiple of block.
    """
    if size % block:
        raise ValueError(f"size {size} is not a multiple of the block side {block}")
    n = size // block

    def blocks(y: np.ndarray) -> np.ndarray:
        return y.reshape(n, block, n, block).transpose(0, 2, 1, 3).reshape(n * n, block * block)

    x, y = blocks(luminance(content, size)), blocks(luminance(result, size))
    mx, my = x.mean(axis=1), y.mean(axis=1)
    vx, vy = x.var(axis=1), y.var(axis=1)
    cov = ((x - mx[:, None]) * (y - my[:, None])).mean(axis=1)
    ssim = ((2 * mx * my + C1) * (2 * cov + C2)) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))
    return float(ssim.mean())


def rgb_histogram(image, size: int = SIZE, bins: int = BINS) -> np.ndarray:
    """Joint RGB histogram (bins³ cells, 256/bins levels each) of ``image`` at size × size, summing to 1."""
    if 256 % bins:
        raise ValueError(f"bins must divide 256, got {bins}")
    q = _rgb(image, size).reshape(-1, 3).astype(np.int64) // (256 // bins)
    cells = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = np.bincount(cells, minlength=bins ** 3).astype(np.float64)
    return hist / hist.sum()


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance sqrt(1 − Σ sqrt(p q)) of two normalised histograms, in [0, 1]."""
    bc = float(np.sqrt(p * q).sum())
    return math.sqrt(max(0.0, 1.0 - bc))


def palette_gain(content, style, result, size: int = SIZE, bins: int = BINS) -> float:
    """(d(content, style) − d(result, style)) / d(content, style), d = Hellinger distance of RGB histograms.

    1.0 when the result's colour histogram equals the style's, 0.0 when it is as far from it as the content's.
    Raises ValueError when content and style have the same histogram (the gain is undefined).
    """
    hs = rgb_histogram(style, size, bins)
    d_content = hellinger(rgb_histogram(content, size, bins), hs)
    if d_content == 0.0:
        raise ValueError("content and style have the same colour histogram: palette gain is undefined")
    return (d_content - hellinger(rgb_histogram(result, size, bins), hs)) / d_content


def pair_metrics(content, style, result) -> dict:
    """Both metrics of one content / style / result triplet: {"structure_ssim": .., "palette_gain": ..}."""
    return {"structure_ssim": structure_ssim(content, result), "palette_gain": palette_gain(content, style, result)}


def summarize(rows: Iterable[dict]) -> dict:
    """Mean, min and max of each metric over rows of `pair_metrics` results."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to summarize")
    out = {}
    for key in ("structure_ssim", "palette_gain"):
        values = [float(r[key]) for r in rows]
        out[key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    return out


def markdown_table(rows: Sequence[dict]) -> str:
    """A Markdown table of per-pair metrics (rows with "content", "style" and both metrics) plus a mean row."""
    lines = ["| content | style | structure SSIM | palette gain |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['content']} | {r['style']} | {r['structure_ssim']:.3f} | {r['palette_gain']:.3f} |")
    if rows:
        s = summarize(rows)
        lines.append(f"| **mean** | | **{s['structure_ssim']['mean']:.3f}** | **{s['palette_gain']['mean']:.3f}** |")
    return "\n".join(lines) + "\n"
