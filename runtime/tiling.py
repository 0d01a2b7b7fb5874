"""Tile windows of the streaming schedule: which input rows/columns a step needs for an output tile.

A step maps its input (resolution ``n``) to its output through: local context of ``pre`` pixels, an
optional ×2 resampling ("down": the Downsample's right/bottom-padded stride-2 conv; "up": nearest ×2),
then ``post`` pixels of context at the output resolution. For an output core ``[a, b)`` (1-D; rows
and columns are independent) ``window`` gives the input window ``[s, e)`` clipped to the image and
where the core lies inside the step's output on that window. Zero padding at a clipped window edge is
the image's own zero padding, so the core is exact; the rest of the output (the halo) is discarded.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Input window ``[start, stop)`` and the output core's offset ``crop`` in the step's output."""
    start: int
    stop: int
    crop: int


def window(a: int, b: int, n_in: int, resample: str, pre: int, post: int) -> Window:
    """The input window of output core ``[a, b)``; ``n_in`` is the input size along this axis."""
    if resample == "same":
        s, e = a - pre - post, b + pre + post
        s, e = max(0, s), min(n_in, e)
        return Window(s, e, a - s)
    if resample == "down":      # output i reads pre-resampling rows 2i .. 2i+2
        s, e = 2 * (a - post) - pre, 2 * (b + post) + 1 + pre
        s, e = max(0, s - s % 2), min(n_in, e + e % 2)   # even: the stride-2 grid stays aligned
        return Window(s, e, a - s // 2)
    if resample == "up":        # output i reads pre-resampling row i // 2
        s, e = (a - post) // 2 - pre, -(-(b + post) // 2) + pre
        s, e = max(0, s), min(n_in, e)
        return Window(s, e, a - 2 * s)
    raise ValueError(f"unknown resampling {resample!r}")


def out_size(n_in: int, resample: str) -> int:
    """The step's output size for input size ``n_in``."""
    return {"same": n_in, "down": n_in // 2, "up": 2 * n_in}[resample]


def tiles(height: int, width: int, tile_h: int, tile_w: int) -> list[tuple[int, int, int, int]]:
    """Output cores ``(r0, r1, c0, c1)`` covering height × width in row-major order (ragged last ones)."""
    tile_h, tile_w = max(1, int(tile_h)), max(1, int(tile_w))
    return [(r, min(height, r + tile_h), c, min(width, c + tile_w))
            for r in range(0, height, tile_h) for c in range(0, width, tile_w)]


def even_tiles(height: int, width: int, tile_h: int, tile_w: int) -> list[tuple[int, int, int, int]]:
    """As ``tiles`` with the same tile count, sizes evened out (none larger than tile_h × tile_w)."""
    n, m = -(-height // max(1, int(tile_h))), -(-width // max(1, int(tile_w)))
    rows = [height * i // n for i in range(n + 1)]
    cols = [width * j // m for j in range(m + 1)]
    return [(rows[i], rows[i + 1], cols[j], cols[j + 1]) for i in range(n) for j in range(m)]


def input_extent(tile: int, resample: str, pre: int, post: int) -> int:
    """Largest input window length for an output core of length ``tile`` (for memory estimates)."""
    w = window(10 ** 6, 10 ** 6 + tile, 10 ** 9, resample, pre, post)
    return w.stop - w.start
