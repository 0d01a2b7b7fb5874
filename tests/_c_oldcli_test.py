"""`quantart stylize` (quantart_runtime.cli:stylize): folders with bad files, exit codes, outputs."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from runtime_helpers import STYLE_SIZE, encode, photo


@pytest.fixture
def style_file(tmp_path):
    path = tmp_path / "style.jpg"
    path.write_bytes(encode(photo(40, 36, 2, "style"), "JPEG", quality=95))
    return path


def invoke(model_dir, style, *args):
    from quantart_runtime._c_oldcli import stylize

    result = CliRunner().invoke(stylize, ["--model", str(model_dir), "--style", str(style),
                                          "--style-size", str(STYLE_SIZE), "--no-progress", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _with_exif_rotation(img):
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_folder_with_bad_files(model_dir, stylizer, style_file, tmp_path, monkeypatch):
    from quantart_runtime.images import load_image

    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    good = {
        "a.png": encode(photo(32, 40, 1)),
        "b.png": encode(photo(30, 30, 2)),                                        # padded to 32x32
        "sub/c.png": encode(np.dstack([photo(28, 24, 3), np.full((28, 24), 128, np.uint8)]), "PNG"),  # RGBA
        "d.png": encode(np.asarray(Image.fromarray(photo(24, 24, 4)).convert("L"))),                  # L
        "e.jpg": _with_exif_rotation(photo(24, 36, 1)),                           # EXIF-rotated
        "f.tif": _cmyk_tiff(photo(20, 20, 2)),                                   # CMYK
        "g.png": _i16_png(),                                                      # 16-bit grey
    }
    bad = {
        "zero.jpg": (b"", "empty file (0 bytes)"),
        "text.png": (b"hello world", "not an image"),
        "trunc.jpg": (encode(photo(64, 64), "JPEG")[:500], "truncated image"),
        "small.png": (encode(photo(3, 40)), "image is 40x3, smaller than one latent cell (4x4)"),
        "bomb.png": (encode(np.zeros((100, 100, 3), np.uint8)), "above Pillow's decompression-bomb limit"),
    }
    for name, data in good.items():
        (src / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (src / name).write_bytes(data)
    before = digests(src)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)     # 100x100 is above, the others below

    out = tmp_path / "out"
    result = invoke(model_dir, style_file, src, tmp_path / "missing.jpg", "-o", out)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    for name, (_, reason) in bad.items():
        assert any(line.startswith(f"failed: {src / name}: ") and reason in line for line in lines), (name, lines)
    assert f"failed: {tmp_path / 'missing.jpg'}: no such file or directory" in lines
    assert lines[-1] == "done 7, failed 6, skipped 0"
    assert digests(src) == before                                       # inputs untouched

    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "b.png", "d.png", "e.jpg", "f.png", "g.png", "sub/c.png"]
    code = stylizer.encode_style(load_image(style_file), size=STYLE_SIZE)
    for name in ("a.png", "b.png", "sub/c.png", "d.png", "g.png"):
        expected = stylizer.stylize(load_image(src / name), code)
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), expected)
    rotated = Image.open(out / "e.jpg")
    assert rotated.format == "JPEG" and rotated.size == (24, 36)      # upright: 24 wide, 36 high
    assert Image.open(out / "f.png").size == (20, 20)


def _cmyk_tiff(img):
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, format="TIFF")
    return buf.getvalue()


def _i16_png():
    values = (photo(16, 20, 3)[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    return buf.getvalue()


def test_skip_existing_ext_glob_and_max_side(model_dir, style_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo(64, 48, 1)))
    (src / "b.jpg").write_bytes(encode(photo(32, 32, 2), "JPEG"))
    (src / "notes.txt").write_text("not matched by the glob")
    out = tmp_path / "out"
    result = invoke(model_dir, style_file, f"{src}/*.*g", "-o", out, "--ext", "jpg", "--max-side", 32)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines()[-1] == "done 2, failed 0, skipped 0"
    assert Image.open(out / "a.jpg").format == "JPEG" and Image.open(out / "a.jpg").size == (24, 32)
    assert Image.open(out / "b.jpg").size == (32, 32)
    stamp = (out / "a.jpg").stat().st_mtime_ns
    result = invoke(model_dir, style_file, src / "a.png", src / "b.jpg", "-o", out, "--ext", "jpg", "--skip-existing")
    assert result.exit_code == 0
    assert result.stderr.strip().splitlines()[-1] == "done 0, failed 0, skipped 2"
    assert (out / "a.jpg").stat().st_mtime_ns == stamp


def test_setup_errors_exit_2(model_dir, style_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo(32, 32)))
    before = digests(src)
    out = tmp_path / "out"
    empty_style = tmp_path / "empty.jpg"
    empty_style.write_bytes(b"")
    cases = [
        ((model_dir, empty_style, src, "-o", out), f"error: style image {empty_style}: empty file (0 bytes)"),
        ((model_dir, tmp_path / "nostyle.jpg", src, "-o", out), "error: style image"),
        ((tmp_path / "nomodel", style_file, src, "-o", out), f"error: model {tmp_path / 'nomodel'}: no such directory"),
        ((model_dir, style_file, src, "-o", src, "--ext", "png"), f"error: output {src / 'a.png'} would overwrite the input"),
        ((model_dir, style_file, tmp_path / "emptydir", "-o", out), "error: no images found"),
    ]
    (tmp_path / "emptydir").mkdir()
    for args, message in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
        assert not any(out.rglob("*.png"))
    assert digests(src) == before
