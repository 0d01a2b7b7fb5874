"""`quantart stylize` (quantart_runtime.cli:stylize): folders with bad files, exit codes, outputs."""
from __future__ import annotations

import hashlib
import io
import os

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
    from quantart_runtime.cli import stylize

    # ONNX Runtime CPU, like the `stylizer` fixture these outputs are compared with (auto may pick OpenVINO BF16)
    result = CliRunner().invoke(stylize, ["--model", str(model_dir), "--style", str(style), "--backend", "cpu",
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
        ((model_dir, style_file, src, "-o", src, "--ext", "png"),
         f"error: output {src / 'a.png'} would overwrite the input"),
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


# -- odd files, limits, interruption ----------------------------------------------------------
def test_symlink_loops_and_dangling_links_are_reported_and_counted(model_dir, style_file, tmp_path):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    (src / "a.png").write_bytes(encode(photo(32, 32, 1)))
    (src / "locked" / "b.png").write_bytes(encode(photo(32, 32, 2)))
    (src / "loop1.png").symlink_to(src / "loop2.png")
    (src / "loop2.png").symlink_to(src / "loop1.png")
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    outer_loop = tmp_path / "outer.png"
    outer_loop.symlink_to(outer_loop)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(out / "a.png")   # an output name that is itself a looping link
    locked = os.geteuid() != 0
    if locked:
        (src / "locked").chmod(0)
    try:
        result = invoke(model_dir, style_file, src, outer_loop, "-o", out)
    finally:
        (src / "locked").chmod(0o755)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert f"failed: {src / 'loop1.png'}: symbolic link loop" in lines
    assert f"failed: {src / 'loop2.png'}: symbolic link loop" in lines
    assert f"failed: {outer_loop}: symbolic link loop" in lines
    assert any(line.startswith(f"failed: {src / 'gone.png'}: broken symbolic link") for line in lines)
    failed = 4 + locked
    if locked:
        assert any(line.startswith(f"failed: {src / 'locked'}: cannot list directory") for line in lines)
    assert lines[-1] == f"done {2 - locked}, failed {failed}, skipped 0"
    assert (out / "a.png").is_file() and not (out / "a.png").is_symlink()
    assert Image.open(out / "a.png").size == (32, 32)


def test_output_dir_is_checked_for_writing_before_any_work(model_dir, style_file, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only directory")
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo(32, 32)))
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = invoke(model_dir, style_file, src, "-o", out)
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to output directory {out}"), lines
    assert "done" not in result.stderr and list(out.iterdir()) == []


@pytest.mark.parametrize("shape", [(1, 5000), (64, 1)])
def test_a_thin_style_is_one_line_exit_2(model_dir, tmp_path, shape):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo(32, 32)))
    style = tmp_path / "thin.png"
    style.write_bytes(encode(np.full((*shape, 3), 120, np.uint8)))
    result = invoke(model_dir, style, src, "-o", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: style image {style}: image is {shape[1]}x{shape[0]}, smaller than one latent "
                     f"cell (4x4)"], lines


def test_a_wide_style_has_its_long_side_capped(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode(photo(32, 32)))
    style = tmp_path / "wide.png"
    style.write_bytes(encode(np.full((16, 5000, 3), 120, np.uint8)))   # 256-wide would be 80000 long
    result = invoke(model_dir, style, src, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_memory_limit_downscales_or_refuses_and_min_size_uses_the_original(model_dir, style_file, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "huge.png").write_bytes(encode(np.full((1600, 1600, 3), 90, np.uint8)))   # ~10 KB, 2.5 Mpx
    (src / "wide.png").write_bytes(encode(np.full((16, 5000, 3), 90, np.uint8)))     # valid: 16 >= 4
    (src / "ok.png").write_bytes(encode(photo(32, 32)))
    out = tmp_path / "out"
    result = invoke(model_dir, style_file, src, "-o", out, "--memory-budget", "128M")
    assert result.exit_code == 0, result.output
    huge = Image.open(out / "huge.png").size
    assert huge[0] == huge[1] and 16 <= huge[0] < 400        # downscaled to what 128 MiB holds
    assert Image.open(out / "wide.png").size == (5000, 16)   # streamed at full size (no default --max-side)

    result = invoke(model_dir, style_file, src, "-o", tmp_path / "out0", "--memory-budget", "128M", "--max-side", 0)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    # 1600x1600: 640000 tokens at stride 2, not even streamed in 128 MiB (wide.png streams)
    assert any(line.startswith(f"failed: {src / 'huge.png'}: image is 1600x1600, above this model's limit")
               and "resizing was not allowed" in line for line in lines), lines
    assert lines[-1] == "done 2, failed 1, skipped 0"

    result = invoke(model_dir, style_file, src, "-o", out, "--memory-budget", "lots")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_sigint_summary_counts_the_files_written(model_dir, style_file, tmp_path):
    import re
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in"
    src.mkdir()
    for i in range(120):
        (src / f"{i:03d}.png").write_bytes(encode(photo(64, 64, 1 + i % 4)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "quantart_runtime", "stylize", "--model", str(model_dir),
                             "--style", str(style_file), "--backend", "cpu", "--style-size", str(STYLE_SIZE),
                             "--batch-size", "2",
                             "--no-progress", str(src), "-o", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    summary = err.strip().splitlines()[-1]
    written = len(list(out.glob("*.png")))
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, err
    found = re.fullmatch(r"done (\d+), failed 0, skipped 0 \(interrupted\)", summary)
    assert found, summary
    assert int(found.group(1)) == written >= 3
    assert not list(out.glob(".*.tmp"))                       # no half-written file left
