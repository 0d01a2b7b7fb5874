"""quantart_runtime.images: loading every mode, bad files, atomic saving, padding and scaling."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from quantart_runtime import ImageError
from quantart_runtime.images import (
    fit_max_side,
    load_image,
    padded_size,
    postprocess,
    preprocess,
    save_image,
    style_size,
)
from runtime_helpers import encode, photo


def _png(image: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def test_rgb_png_and_jpeg_roundtrip(tmp_path):
    img = photo(20, 30)
    np.testing.assert_array_equal(load_image(encode(img)), img)
    path = tmp_path / "a.png"
    path.write_bytes(encode(img))
    np.testing.assert_array_equal(load_image(path), img)
    np.testing.assert_array_equal(load_image(str(path)), img)
    jpeg = load_image(encode(img, "JPEG", quality=95))
    assert jpeg.shape == (20, 30, 3) and jpeg.dtype == np.uint8


def test_modes_become_rgb():
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    out = load_image(_png(Image.fromarray(grey, "L")))
    assert out.shape == (4, 6, 3) and (out == grey[..., None]).all()

    # alpha composited on white: transparent -> white, opaque -> the colour, half -> the blend
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, :, 3] = [0, 255, 128]
    rgba[1, :, 3] = 255
    out = load_image(_png(Image.fromarray(rgba, "RGBA")))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 0, 0]
    assert abs(int(out[0, 2, 0]) - 227) <= 1 and abs(int(out[0, 2, 1]) - 127) <= 1
    alpha = np.array([[0, 255], [255, 255]], np.uint8)
    la = Image.fromarray(np.stack([np.full((2, 2), 40, np.uint8), alpha], -1), "LA")
    out = load_image(_png(la))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [40, 40, 40]

    pal = Image.fromarray(photo(8, 8)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    out = load_image(_png(pal))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    pal_t = pal.copy()
    pal_t.info["transparency"] = int(np.asarray(pal)[0, 0])
    out = load_image(_png(pal_t, transparency=int(np.asarray(pal)[0, 0])))
    assert out[0, 0].tolist() == [255, 255, 255]

    cmyk = Image.fromarray(photo(6, 5)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=100)
    out = load_image(buf.getvalue())
    assert out.shape == (6, 5, 3)
    assert np.abs(out.astype(int) - np.asarray(cmyk.convert("RGB"), int)).mean() < 12


def test_sixteen_bit_grey():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = load_image(_png(Image.fromarray(values)))
    assert out[0, :, 0].tolist() == [0, 100, 255] and (out[..., 0] == out[..., 2]).all()
    i32 = Image.fromarray(np.array([[0, 257 * 50, 65535]], dtype=np.int32))
    buf = io.BytesIO()
    i32.save(buf, format="TIFF")
    assert load_image(buf.getvalue())[0, :, 1].tolist() == [0, 50, 255]


def test_exif_orientation_is_applied():
    img = photo(10, 20)             # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6                # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(buf.getvalue())
    assert out.shape == (20, 10, 3)
    expected = np.rot90(img, k=-1)
    assert np.abs(out.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("data, message", [
    (b"", "empty data (0 bytes)"),
    (b"this is not an image at all", "not an image"),
    (None, "truncated"),
])
def test_bad_bytes(data, message):
    if data is None:
        data = encode(photo(64, 64), "JPEG")[:600]
    with pytest.raises(ImageError, match=re.escape(message)) as info:
        load_image(data)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "dir.png").mkdir()
    cases = {"zero.jpg": "empty file (0 bytes)", "text.png": "not an image", "dir.png": "is a directory",
             "missing.png": "no such file"}
    for name, message in cases.items():
        with pytest.raises(ImageError, match=re.escape(message)):
            load_image(tmp_path / name)
    with pytest.raises(ImageError, match="expected a file path or encoded bytes"):
        load_image(12)


@pytest.mark.parametrize("pixels", [1000, 3000])   # the warning range (1x..2x) and the error range (> 2x)
def test_decompression_bomb(monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)
    side = int(pixels ** 0.5) + 1
    data = _png(Image.new("RGB", (side, side)))
    with pytest.raises(ImageError, match="above Pillow's decompression-bomb limit of 900 pixels"):
        load_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10 ** 6)
    assert load_image(data).shape == (side, side, 3)


def test_save_image_by_extension_and_atomic(tmp_path):
    img = photo(16, 24)
    save_image(img, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), img)
    save_image(img, tmp_path / "b.JPG", quality=90)
    assert Image.open(tmp_path / "b.JPG").format == "JPEG"
    with pytest.raises(ValueError, match="unknown image extension"):
        save_image(img, tmp_path / "c.xyz")
    (tmp_path / "d.png").write_bytes(b"old")
    with pytest.raises(ImageError):
        save_image(img.astype(np.float32), tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes() == b"old"       # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.JPG", "d.png"]  # no temp files left


def test_pre_and_post_processing():
    img = photo(10, 7)
    x = preprocess([img], 4)
    assert x.shape == (1, 3, 12, 8) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, :, :10, :7], img.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
    # reflect padding on the bottom / right edges (the edge row is not repeated)
    np.testing.assert_array_equal(x[0, :, 10, :7], x[0, :, 8, :7])
    np.testing.assert_array_equal(x[0, :, :10, 7], x[0, :, :10, 5])
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(postprocess(x, [(10, 7)])[0], img)       # exact roundtrip
    y = np.array([-3.0, -1.0, -0.5, 0.0, 0.999, 1.0, 7.0], np.float32).reshape(1, 1, 1, 7).repeat(3, 1)
    assert postprocess(y, [(1, 7)])[0][0, :, 0].tolist() == [0, 0, 64, 128, 255, 255, 255]
    with pytest.raises(ValueError, match="does not pad"):
        preprocess([photo(8, 8), photo(12, 8)], 4)


def test_geometry():
    assert padded_size(17, 16, 16) == (32, 16)
    assert style_size(300, 400, 256, 16) == (256, 336)       # 341.3 -> 336
    assert style_size(512, 256, 256, 16) == (512, 256)
    assert style_size(10, 10, None, 16) == (16, 16)
    assert fit_max_side(photo(40, 20), 10).shape == (10, 5, 3)
    assert fit_max_side(photo(40, 20), 0).shape == (40, 20, 3)


def test_atomic_writes_make_ordinary_files(tmp_path):
    """Outputs get the usual permissions (umask applied), not mkstemp's private 0600."""
    import os

    from quantart_runtime.images import save_image
    from quantart_runtime.util.atomic import write_bytes

    umask = os.umask(0)
    os.umask(umask)
    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    write_bytes(tmp_path / "b.bin", b"x")
    for name in ("a.png", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.bin"]
