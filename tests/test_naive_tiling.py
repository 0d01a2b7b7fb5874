"""The diffusers-style naive tiling baseline (benchmarks/naive_tiling.py) on the tiny model: wired right (one
tile covering the image is the untiled result, bit for bit) and NOT exact when tiles cut through an image
whose quadrants have very different statistics (per-tile GroupNorm statistics and per-tile attention)."""
from __future__ import annotations

import numpy as np
import pytest

from quantart_benchmarks.naive_tiling import (
    adversarial_quadrants,
    fidelity,
    naive_tiled_stylize,
    tile_count,
    tile_geometry,
)


@pytest.fixture(scope="module")
def style_code(stylizer):
    rng = np.random.default_rng(3)
    return stylizer.encode_style(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), size=32)


def test_one_tile_over_the_whole_image_is_the_untiled_result(stylizer, style_code):
    img = adversarial_quadrants(40, 56)
    untiled = stylizer.stylize(img, style_code)
    assert tile_count(40, 56, 96, stylizer.stride) == 1
    assert np.array_equal(naive_tiled_stylize(stylizer, img, style_code, tile=96), untiled)


@pytest.mark.parametrize("tile", [16, 24])
def test_naive_tiles_are_not_exact_on_an_adversarial_image(stylizer, style_code, tile):
    """Quadrants saturated red / near black / grey noise / bright ramp at 64x64, tiles cutting through them
    (ragged last tiles included): the per-tile GroupNorm statistics change the result far beyond
    the streaming executor's bar (max |Δ| ≤ 1 level on ≥ 99.9 % of the pixels)."""
    img = adversarial_quadrants(64, 64)
    untiled = stylizer.stylize(img, style_code)
    naive = naive_tiled_stylize(stylizer, img, style_code, tile=tile)
    assert naive.shape == untiled.shape and naive.dtype == np.uint8
    assert tile_count(64, 64, tile, stylizer.stride) > 4
    f = fidelity(naive, untiled)
    assert f["within_1_level"] < 0.999 and f["max_abs"] > 8, f
    assert f["psnr_db"] < 40, f


def test_tile_geometry_follows_diffusers():
    assert tile_geometry(512, 8) == {"tile_px": 512, "tile_latent": 64, "blend_latent": 16, "step_latent": 48}
    with pytest.raises(ValueError):
        tile_geometry(20, 8)
