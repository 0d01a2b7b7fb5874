"""The usual remedy for large images, as a baseline: diffusers-style tiled VAE (NOT exact).

Mirrors diffusers' ``AutoencoderKL.tiled_encode`` / ``tiled_decode``: the content encoder runs on
independent overlapping tiles (tile side ``tile`` px, overlap ``overlap`` of a tile), the latent tiles are
blended linearly over the overlap with the tile above and the tile to the left and cropped to the stride
between tiles; the SGA (global attention, like diffusers' UNet on the whole latent) runs on the whole
latent; the decoder runs on overlapping latent tiles blended the same way in pixels. Every tile is a
separate graph call through the existing (untiled) graphs, so each tile's GroupNorms use that tile's own
statistics and each tile's attention sees only that tile: colours shift tile by tile and the seams show,
most where the image's statistics change (``adversarial_quadrants``). The exact streaming executor
(``Stylizer.stylize(..., streaming="always")``) is what this baseline is measured against.
"""
from __future__ import annotations

import numpy as np

from quantart_runtime import images as im
from quantart_runtime.util import psnr_uint8

DEFAULT_OVERLAP = 0.25   # diffusers' tile_overlap_factor


def _blend_v(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """diffusers' blend_v: the first ``extent`` rows of ``b`` fade in from the last rows of ``a``."""
    extent = min(a.shape[2], b.shape[2], extent)
    for y in range(extent):
        w = y / extent
        b[:, :, y, :] = a[:, :, -extent + y, :] * (1 - w) + b[:, :, y, :] * w
    return b


def _blend_h(a: np.ndarray, b: np.ndarray, extent: int) -> np.ndarray:
    """diffusers' blend_h: the first ``extent`` columns of ``b`` fade in from the last columns of ``a``."""
    extent = min(a.shape[3], b.shape[3], extent)
    for x in range(extent):
        w = x / extent
        b[:, :, :, x] = a[:, :, :, -extent + x] * (1 - w) + b[:, :, :, x] * w
    return b


def _tiled(x: np.ndarray, run, tile_in: int, step_in: int, blend_out: int, limit_out: int) -> np.ndarray:
    """Run ``run`` on overlapping tiles of ``x`` (B, C, H, W): tiles of ``tile_in`` every ``step_in``;
    blend the outputs over ``blend_out`` and crop each to ``limit_out`` (diffusers' row_limit)."""
    rows = []
    for i in range(0, x.shape[2], step_in):
        rows.append([run(np.ascontiguousarray(x[:, :, i:i + tile_in, j:j + tile_in]))
                     for j in range(0, x.shape[3], step_in)])
    out_rows = []
    for i, row in enumerate(rows):
        cells = []
        for j, t in enumerate(row):
            t = np.array(t, dtype=np.float32, copy=True)
            if i > 0:
                t = _blend_v(rows[i - 1][j], t, blend_out)
            if j > 0:
                t = _blend_h(row[j - 1], t, blend_out)
            row[j] = t   # diffusers blends with the already-blended neighbours
            cells.append(t[:, :, :limit_out, :limit_out])
        out_rows.append(np.concatenate(cells, axis=3))
    return np.concatenate(out_rows, axis=2)


def tile_geometry(tile: int, stride: int, overlap: float = DEFAULT_OVERLAP) -> dict:
    """diffusers' numbers for a tile of ``tile`` px: latent tile, blend extent and the step between tiles,
    in latent cells (``tile`` must be a multiple of ``stride`` and span at least 2 latent cells)."""
    if tile % stride or tile < 2 * stride:
        raise ValueError(f"tile {tile} must be a multiple of the latent stride {stride}, at least {2 * stride}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    latent = tile // stride
    blend = int(latent * overlap)
    return {"tile_px": tile, "tile_latent": latent, "blend_latent": blend, "step_latent": latent - blend}


def naive_tiled_stylize(stylizer, content: np.ndarray, style, tile: int, overlap: float = DEFAULT_OVERLAP,
                        content_ratio: float = 1.0, output_ratio: float = 1.0) -> np.ndarray:
    """Stylize the (H, W, 3) uint8 ``content`` with ``style`` (a StyleCode) the diffusers way: tiled content
    encoder, whole SGA, tiled decoder (module docstring). Returns (H, W, 3) uint8."""
    s = stylizer.stride
    g = tile_geometry(tile, s, overlap)
    x = stylizer.preprocess([content])                    # (1, 3, Hp, Wp), reflect-padded like untiled
    latent = _tiled(x, stylizer.content_latent, tile, g["step_latent"] * s, g["blend_latent"], g["step_latent"])
    styled, _ = stylizer.stylize_latent(latent, style.latent, content_ratio, output_ratio)
    image = _tiled(styled, stylizer.decode, g["tile_latent"], g["step_latent"],
                   g["blend_latent"] * s, g["step_latent"] * s)
    return stylizer.postprocess(image, [content.shape[:2]])[0]


def tile_count(height: int, width: int, tile: int, stride: int, overlap: float = DEFAULT_OVERLAP) -> int:
    """Tiles per graph (content encoder or decoder) of a height x width image."""
    g = tile_geometry(tile, stride, overlap)
    hp, wp = im.padded_size(height, width, stride)
    step = g["step_latent"] * stride
    return len(range(0, hp, step)) * len(range(0, wp, step))


def fidelity(ours: np.ndarray, reference: np.ndarray) -> dict:
    """uint8 images compared: PSNR (dB), max |Δ|, share of pixels within 1 level (every channel)."""
    d = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return {"psnr_db": psnr_uint8(ours, reference), "max_abs": int(d.max()),
            "within_1_level": float(np.mean(d.max(axis=2) <= 1))}


def adversarial_quadrants(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A content image whose quadrants have very different statistics: saturated red, near black, mid-grey
    noise and a bright gradient (the case where per-tile GroupNorm statistics go wrong)."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    h2, w2 = height // 2, width // 2
    img[:h2, :w2] = (255, 0, 0)
    img[:h2, w2:] = rng.integers(0, 12, (h2, width - w2, 3))
    img[h2:, :w2] = rng.integers(96, 160, (height - h2, w2, 3))
    ramp = np.linspace(160, 255, width - w2, dtype=np.float32)
    img[h2:, w2:] = np.broadcast_to(ramp[None, :, None], (height - h2, width - w2, 3)).astype(np.uint8)
    return img
