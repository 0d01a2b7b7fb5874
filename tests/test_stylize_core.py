"""quantart_runtime.core: the one stylize core of the CLI, the Ray Data job and the service — error
policy (any per-item exception reported, the others go on), size policy (minimum size on the original,
downscale or refuse above the memory limit, style long side capped), writability check."""
from __future__ import annotations

import os

import numpy as np
import pytest

from runtime_helpers import encode, photo

STYLE = photo(40, 36, 2, "style")


@pytest.fixture
def core(stylizer):
    from quantart_runtime.core import StylizeCore

    before = stylizer.size_policy
    yield StylizeCore(stylizer, STYLE, style_size=32, memory_budget="128M")
    stylizer.size_policy = before


def test_every_failure_is_reported_for_its_item_and_the_others_go_on(core, tmp_path):
    from quantart_runtime.images import save_image

    big = np.zeros((1600, 1600, 3), np.uint8)
    items = [
        ("good", encode(photo(32, 40, 1)), tmp_path / "good.png"),
        ("text", b"hello world", tmp_path / "text.png"),
        ("speck", encode(photo(3, 40, 1)), tmp_path / "speck.png"),
        ("big", encode(big), tmp_path / "big.png"),
        ("unwritable", encode(photo(24, 24, 2)), tmp_path / "no-such-format.xyz"),
        ("good2", encode(photo(28, 20, 3)), tmp_path / "good2.png"),
    ]
    outcomes = {o.key: o for o in core.run(items, write=save_image, window=3)}
    assert set(outcomes) == {key for key, _, _ in items}
    assert outcomes["good"].ok and outcomes["good2"].ok
    assert (tmp_path / "good.png").is_file() and (tmp_path / "good2.png").is_file()
    assert "not an image" in outcomes["text"].error
    assert "image is 40x3, smaller than one latent cell" in outcomes["speck"].error   # the ORIGINAL size
    assert outcomes["big"].ok and outcomes["big"].resized_from == (1600, 1600)          # downscaled to fit
    assert "cannot write" in outcomes["unwritable"].error and "unknown image extension" in outcomes["unwritable"].error
    assert not (tmp_path / "no-such-format.xyz").exists()

    core.resize = False                     # the caller asks for no resize: refused, not allocated
    refused = core.run([("big", big, None)])[0]
    assert not refused.ok and "resizing was not allowed" in refused.error


def test_a_batch_with_an_unexpected_exception_isolates_that_image(core, monkeypatch):
    images = [photo(32, 32, 1), photo(32, 32, 2), photo(32, 32, 3)]
    real = core.stylizer.stylize

    def flaky(contents, style, **options):
        batch = contents if isinstance(contents, list) else [contents]
        if any(img is images[1] for img in batch):
            raise LookupError("a bug in this image's path")   # not an ImageError: still per item
        return real(contents, style, **options)

    monkeypatch.setattr(core.stylizer, "stylize", flaky)
    results = core.stylize_many(images)
    assert isinstance(results[1], LookupError)
    assert results[0].shape == (32, 32, 3) and results[2].shape == (32, 32, 3)
    from quantart_runtime.core import failure_reason

    assert failure_reason(results[1]) == "stylization failed: LookupError: a bug in this image's path"


def test_minimum_size_is_checked_before_the_downscale(core):
    from quantart_runtime.errors import ImageError

    core.max_side = 1024
    prepared = core.prepare(np.full((16, 5000, 3), 90, np.uint8))   # valid: 16 >= the stride
    h, w = prepared.image.shape[:2]
    assert prepared.resized and w <= 1024 and h >= core.stylizer.stride
    assert prepared.header() == f"5000x16->{w}x{h}"
    with pytest.raises(ImageError, match="image is 5000x2, smaller than one latent cell"):
        core.prepare(np.full((2, 5000, 3), 90, np.uint8))


def test_style_long_side_is_capped_and_a_thin_style_is_refused(core):
    from quantart_runtime.errors import ImageError
    from quantart_runtime.images import STYLE_MAX_ASPECT

    code = core.encode_style(np.full((16, 5000, 3), 90, np.uint8))
    assert max(code.size) <= STYLE_MAX_ASPECT * 32 and min(code.size) >= core.stylizer.stride
    with pytest.raises(ImageError, match="smaller than one latent cell"):
        core.encode_style(np.full((1, 64, 3), 90, np.uint8))


def test_check_writable(tmp_path):
    from quantart_runtime.core import check_writable

    check_writable(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        check_writable(tmp_path / "file")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(PermissionError):
                check_writable(locked)
        finally:
            locked.chmod(0o755)


def test_one_extension_set_and_format_name():
    from quantart_runtime.cluster import storage as cluster_files
    from quantart_runtime.core import INPUT_EXTENSIONS, OUTPUT_FORMATS
    from quantart_runtime.inputs import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS

    assert INPUT_EXTENSIONS == frozenset(IMAGE_EXTENSIONS)
    assert cluster_files.OUTPUT_FORMATS == OUTPUT_FORMATS == ("same", *OUTPUT_EXTENSIONS)
    assert cluster_files.output_name("a/b.tif", "same") == "a/b.png"      # as quantart stylize
    assert cluster_files.output_name("a/b.JPG", "same") == "a/b.jpg"
    assert cluster_files.output_name("a/b.tif", "webp") == "a/b.webp"
