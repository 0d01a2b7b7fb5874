"""quantart_runtime.quality on hand-made images: the two demo metrics behave as documented."""
from __future__ import annotations

import numpy as np
import pytest

from quantart_runtime import quality


def _gradient(h=128, w=128, colour=(255, 128, 0)):
    ramp = np.linspace(0.0, 1.0, w)[None, :, None] * np.linspace(0.2, 1.0, h)[:, None, None]
    return (ramp * np.array(colour)).round().astype(np.uint8)


def _checker(h=128, w=128, cell=4, lo=(20, 20, 200), hi=(230, 230, 40)):
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy // cell + xx // cell) % 2).astype(bool)
    out = np.empty((h, w, 3), np.uint8)
    out[mask], out[~mask] = hi, lo
    return out


def test_identical_images_have_ssim_one_and_zero_gain():
    content, style = _gradient(), _checker()
    assert quality.structure_ssim(content, content) == pytest.approx(1.0, abs=1e-12)
    assert quality.palette_gain(content, style, content) == pytest.approx(0.0, abs=1e-12)


def test_result_equal_to_style_has_gain_one():
    content, style = _gradient(), _checker()
    assert quality.palette_gain(content, style, style) == pytest.approx(1.0, abs=1e-12)


def test_inverted_structure_scores_below_zero_and_recoloured_structure_scores_high():
    pattern = _checker(lo=(40, 40, 40), hi=(215, 215, 215))
    assert quality.structure_ssim(pattern, 255 - pattern) < 0.0
    content = _gradient(colour=(200, 200, 200))
    # same layout, other hues: luminance SSIM stays high while the palette moves
    recoloured = _gradient(colour=(255, 160, 60))
    assert quality.structure_ssim(content, recoloured) > 0.9


def test_halfway_palette_scores_between_zero_and_one():
    content = np.full((128, 128, 3), (0, 0, 255), np.uint8)
    style = np.full((128, 128, 3), (255, 0, 0), np.uint8)
    half = content.copy()
    half[:, :64] = style[:, :64]
    gain = quality.palette_gain(content, style, half)
    # p = content, q = style: d = 1; half/half mixture: d = sqrt(1 - sqrt(0.5))
    assert gain == pytest.approx(1.0 - np.sqrt(1.0 - np.sqrt(0.5)), abs=1e-9)
    assert quality.palette_gain(content, style, np.full_like(content, (0, 255, 0))) == pytest.approx(0.0)


def test_hellinger_and_histogram_basics():
    h = quality.rgb_histogram(_checker())
    assert h.shape == (512,) and h.sum() == pytest.approx(1.0)
    assert np.count_nonzero(h) == 2
    assert quality.hellinger(h, h) == pytest.approx(0.0, abs=1e-7)


def test_sizes_are_normalised_and_pil_accepted():
    from PIL import Image

    big = _gradient(256, 192)
    assert quality.structure_ssim(big, Image.fromarray(big)) == pytest.approx(1.0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        quality.structure_ssim(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
    same = _gradient()
    with pytest.raises(ValueError, match="undefined"):
        quality.palette_gain(same, same, _checker())


def test_table_has_one_row_per_pair_and_the_mean():
    rows = [{"content": "1.jpg", "style": "2.jpg", "structure_ssim": 0.5, "palette_gain": 0.25},
            {"content": "1.jpg", "style": "3.jpg", "structure_ssim": 0.7, "palette_gain": 0.75}]
    table = quality.markdown_table(rows)
    assert table.count("\n") == 5
    assert "**0.600**" in table and "**0.500**" in table
