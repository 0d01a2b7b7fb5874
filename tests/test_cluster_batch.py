"""quantart_runtime.cluster.batch on a local 2-CPU Ray (loopback): outputs bit-identical to the
single-process runtime, bad files recorded, a worker killed mid-job loses nothing, reruns skip."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cluster_helpers import encode, smooth_image

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)

STYLE_SIZE = 64
# name -> (height, width); mixed sizes, some not multiples of the latent stride (4), one nested
GOOD = {"a.png": (32, 32), "b.png": (40, 52), "c.png": (32, 32), "d.jpg": (36, 36), "e.png": (64, 48),
        "sub/f.png": (32, 32), "sub/g.png": (33, 47), "h.bmp": (32, 40)}
BAD = {"zero.png": "empty", "truncated.png": "truncated", "text.jpg": "not an image", "speck.png": "latent cell"}


@pytest.fixture(scope="module")
def local_ray():
    from quantart_runtime.cluster.batch import ray_init_options

    ray.init(num_cpus=2, log_to_driver=False, **ray_init_options(None))   # as stylize-dataset starts it
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    for i, (name, (h, w)) in enumerate(sorted(GOOD.items())):
        fmt = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP"}[name.rsplit(".", 1)[1]]
        (src / name).write_bytes(encode(smooth_image(h, w, seed=i), fmt))
    (src / "zero.png").write_bytes(b"")
    (src / "truncated.png").write_bytes(encode(smooth_image(64, 64, seed=50))[:300])
    (src / "text.jpg").write_text("this is not a picture\n")
    (src / "speck.png").write_bytes(encode(smooth_image(2, 3, seed=51)))
    (src / "notes.txt").write_text("ignored: not an image extension\n")
    style = root / "style.png"
    style.write_bytes(encode(smooth_image(80, 96, seed=77)))
    return src, style


@pytest.fixture(scope="module")
def expected(model_dir, dataset):
    """The single-process runtime's output for every good input (one image per call)."""
    from quantart_runtime import Stylizer
    from quantart_runtime.images import load_image

    src, style = dataset
    # one ORT thread, as the workers (cpus_per_worker=1): ORT sums can depend on the thread count
    stylizer = Stylizer.load(model_dir, backend="onnxruntime", intra_op_threads=1)
    code = stylizer.encode_style(load_image(style), size=STYLE_SIZE)
    return {name: stylizer.stylize(load_image(src / name), code) for name in GOOD}


def _check_outputs(out, expected):
    from quantart_runtime.cluster.storage import output_name
    from quantart_runtime.images import load_image, save_image

    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted([output_name(n) for n in GOOD] + ["failures.jsonl"])  # once each, no temp files
    for name, want in expected.items():
        got_path = out / output_name(name)
        if name.endswith(".jpg"):  # lossy: the same array must give the same bytes
            ref = save_image(want, out.parent / f"ref-{os.getpid()}.jpg")
            assert got_path.read_bytes() == ref.read_bytes(), name
            ref.unlink()
        else:
            got = load_image(got_path)
            assert got.shape == want.shape and np.array_equal(got, want), name


def _failures(path):
    return {os.path.basename(rec["path"]): rec["reason"]
            for rec in map(json.loads, path.read_text().splitlines())}


def test_batch_job_matches_runtime_records_failures_and_reruns_skip(local_ray, model_dir, dataset, expected,
                                                                    tmp_path):
    from quantart_runtime.cluster import stylize_dataset
    from quantart_runtime.cluster.cli import stylize_dataset as cli

    src, style = dataset
    out = tmp_path / "out"
    summary = stylize_dataset(model_dir, style, src, out, num_workers=2, batch_size=3, backend="onnxruntime",
                              style_size=STYLE_SIZE, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (len(GOOD), len(BAD), 0)
    assert summary.images_per_s > 0
    failures = _failures(out / "failures.jsonl")
    assert set(failures) == set(BAD)
    for name, words in BAD.items():
        assert words in failures[name], (name, failures[name])
    _check_outputs(out, expected)

    # rerun through the CLI: every good output is skipped (not rewritten), the bad files fail again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.*") if p.name != "failures.jsonl"}
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src), str(out),
                                      "--num-workers", "1", "--backend", "onnxruntime",
                                      "--style-size", str(STYLE_SIZE), "--no-progress"])
    assert result.exit_code == 1, result.output
    assert f"done 0, failed {len(BAD)}, skipped {len(GOOD)}" in result.output
    assert "zero.png" in result.output and "truncated" in result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    _check_outputs(out, expected)


def test_killed_worker_is_replaced_and_nothing_is_lost(local_ray, model_dir, dataset, expected, tmp_path,
                                                       monkeypatch):
    from quantart_runtime.cluster import stylize_dataset
    from quantart_runtime.cluster.batch import CRASH_ONCE_ENV

    src, style = dataset
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    out = tmp_path / "out"
    summary = stylize_dataset(model_dir, style, src, out, num_workers=2, batch_size=2, backend="onnxruntime",
                              style_size=STYLE_SIZE, progress=False)
    assert marker.exists()  # a worker really died (os._exit) on its first batch
    assert (summary.done, summary.failed) == (len(GOOD), len(BAD))
    assert set(_failures(out / "failures.jsonl")) == set(BAD)
    _check_outputs(out, expected)


def test_cli_bad_style_or_model_exits_2_without_starting_ray(model_dir, dataset, tmp_path):
    from quantart_runtime.cluster.cli import stylize_dataset as cli

    src, _ = dataset
    bad_style = tmp_path / "style.png"
    bad_style.write_text("no image")
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(bad_style), str(src),
                                      str(tmp_path / "o")])
    assert result.exit_code == 2 and "style image" in result.output
    result = CliRunner().invoke(cli, ["--model", str(tmp_path / "nope"), "--style", str(bad_style), str(src),
                                      str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such directory" in result.output
    assert not (tmp_path / "o").exists()


def test_output_is_never_the_input_and_is_left_out_of_the_inputs(model_dir, dataset, tmp_path):
    from quantart_runtime.cluster import storage
    from quantart_runtime.cluster.cli import stylize_dataset as cli

    src, style = dataset
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src), str(src)])
    assert result.exit_code == 2 and "never overwritten" in result.output
    names = [rel for _, rel in storage.list_inputs(src, exclude=src / "sub")]
    assert "a.png" in names and not any(n.startswith("sub/") for n in names)
    assert "notes.txt" not in names and "zero.png" in names


# -- size policy, bad files and failures ------------------------------------------------------
def test_one_oversized_image_does_not_abort_the_job(local_ray, model_dir, dataset, tmp_path):
    """--max-side 0 (no resize) and a small memory budget: the 1600x1600 image is listed in
    failures.jsonl with its reason; the good ones and the broken links' neighbours are written."""
    from PIL import Image

    from quantart_runtime.cluster.cli import stylize_dataset as cli

    _, style = dataset
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"good{i}.png").write_bytes(encode(smooth_image(32, 40, seed=i)))
    (src / "huge.png").write_bytes(encode(np.full((1600, 1600, 3), 90, np.uint8)))   # ~10 KB on disk
    (src / "loop.png").symlink_to(src / "loop.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src), str(out),
                                      "--num-workers", "1", "--backend", "onnxruntime", "--batch-size", "4",
                                      "--style-size", str(STYLE_SIZE), "--no-progress", "--ext", "jpg",
                                      "--max-side", "0", "--memory-budget", "128M"])
    assert result.exit_code == 1, result.output
    assert "done 3, failed 2, skipped 0" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl", "good0.jpg", "good1.jpg", "good2.jpg"]
    assert Image.open(out / "good0.jpg").size == (40, 32)
    failures = _failures(out / "failures.jsonl")
    assert set(failures) == {"huge.png", "loop.png"}
    assert "image is 1600x1600, above this model's limit" in failures["huge.png"]
    assert failures["loop.png"] == "symbolic link loop"

    # default size policy: the same image is downscaled to the memory limit and written
    out2 = tmp_path / "out2"
    (src / "loop.png").unlink()
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src / "huge.png"),
                                      str(out2), "--num-workers", "1", "--backend", "onnxruntime",
                                      "--style-size", str(STYLE_SIZE), "--no-progress", "--memory-budget", "128M"])
    assert result.exit_code == 0, result.output
    w, h = Image.open(out2 / "huge.png").size
    assert w == h and 16 <= w < 400

    # above the untiled limit but streamable in the budget: written at full size, not downscaled
    wide = smooth_image(24, 3000, seed=5)
    (src / "wide.png").write_bytes(encode(wide))
    out3 = tmp_path / "out3"
    result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src / "wide.png"),
                                      str(out3), "--num-workers", "1", "--backend", "onnxruntime",
                                      "--style-size", str(STYLE_SIZE), "--no-progress", "--memory-budget", "128M"])
    assert result.exit_code == 0, result.output
    assert Image.open(out3 / "wide.png").size == (3000, 24)


def test_ext_is_the_option_and_format_a_hidden_alias(tmp_path):
    from quantart_runtime.cluster.cli import stylize_dataset as cli

    args = ["--model", "m", "--style", "s", "in", "out"]
    assert cli.make_context("x", [*args, "--ext", "webp"]).params["ext"] == "webp"
    assert cli.make_context("x", [*args, "--format", "png"]).params["legacy_format"] == "png"
    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert "--ext" in help_text and "--format" not in help_text


def test_unwritable_output_fails_before_any_work(model_dir, dataset, tmp_path):
    from quantart_runtime.cluster.cli import stylize_dataset as cli

    if os.geteuid() == 0:
        pytest.skip("root can write to a read-only directory")
    src, style = dataset
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = CliRunner().invoke(cli, ["--model", str(model_dir), "--style", str(style), str(src), str(out)])
    finally:
        out.chmod(0o755)
    assert result.exit_code == 2 and "Permission denied" in result.output, result.output
    assert list(out.iterdir()) == []


def test_a_ray_started_here_binds_loopback_only(local_ray):
    psutil = pytest.importorskip("psutil")
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert listening, "Ray's processes listen somewhere"
    exposed = [(c.laddr.ip, c.laddr.port) for c in listening
               if c.laddr.ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert exposed == []
