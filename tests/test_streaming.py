"""The streaming executor on the tiny model: exact against the untiled runtime at any tile size, GroupNorm
statistics over the whole image in float64, temporary files always removed, one-line refusals, and the
memory bound under RLIMIT_AS (a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from quantart_runtime import stream_dispatch as dispatch
from quantart_runtime import streaming as streaming_mod
from quantart_runtime.errors import ImageTooLarge
from quantart_runtime.tensor_store import TEMP_ENV, NormStats


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of uint8 values within one level."""
    return float(np.mean(np.abs(a.astype(int) - b.astype(int)) <= 1))


@pytest.fixture(scope="module")
def style_code(stylizer):
    rng = np.random.default_rng(1)
    return stylizer.encode_style(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), size=None)


@pytest.mark.parametrize("shape, tile", [((70, 93), None), ((70, 93), 5), ((70, 93), (7, 3)),
                                         ((52, 44), 16), ((52, 44), (9, 64))])
def test_streamed_equals_untiled(stylizer, style_code, shape, tile):
    """Ragged tiles, tiles that are not multiples of anything, odd latent sizes (13 x 11)."""
    rng = np.random.default_rng(shape[0])
    img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    ref = stylizer.stylize(img, style_code, streaming="never")
    out, info = dispatch.stylize_one(stylizer, img, style_code, 1.0, 1.0, tile=tile)
    assert info.streamed and info.tiles > 0
    assert out.shape == ref.shape
    assert _close(out, ref) >= 0.999
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def test_stylize_streaming_modes_and_progress(stylizer, style_code):
    img = np.random.default_rng(3).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    seen = []
    a = stylizer.stylize(img, style_code, streaming="always", progress=lambda d, t: seen.append((d, t)))
    assert stylizer.last_run.streamed and stylizer.last_run.tiles == seen[-1][1] == seen[-1][0]
    b = stylizer.stylize([img, img[:20]], style_code, streaming="never")
    assert not stylizer.last_run.streamed
    assert _close(a, b[0]) >= 0.999
    with pytest.raises(ValueError, match="streaming must be one of"):
        stylizer.stylize(img, style_code, streaming="sometimes")


def test_style_encoder_streams_exactly(stylizer):
    img = np.random.default_rng(4).integers(0, 256, (44, 60, 3), dtype=np.uint8)
    untiled = stylizer.encode_style(img, size=None, streaming="never")
    stylizer.clear_style_cache()
    streamed = stylizer.encode_style(img, size=None, streaming="always")
    assert stylizer.last_run.streamed
    assert np.mean(streamed.indices == untiled.indices) >= 0.999
    same = streamed.indices == untiled.indices
    assert np.abs(streamed.latent - untiled.latent).max(axis=1)[same].max() < 1e-3


def _quadrants(size: int = 64) -> np.ndarray:
    """Quadrants with very different statistics: saturated white, black, noise, saturated red."""
    h = size // 2
    img = np.zeros((size, size, 3), np.uint8)
    img[:h, :h] = 255
    img[h:, :h] = np.random.default_rng(5).integers(0, 256, (size - h, h, 3))
    img[h:, h:] = (255, 0, 0)
    return img


def test_adversarial_quadrants_naive_tiles_differ_ours_do_not(stylizer, style_code):
    img = _quadrants()
    ref = stylizer.stylize(img, style_code, streaming="never")
    ex = dispatch.executor(stylizer)
    x = stylizer.preprocess([img])
    ones = np.ones(1, np.float32)
    budget = stylizer.size_policy.budget
    ours, _ = ex.stylize(x, style_code.latent, ones, ones, budget, tile=24)           # cuts at 24, 48
    naive, _ = ex.stylize(x, style_code.latent, ones, ones, budget, tile=24, norm="tile")
    ours, naive = (stylizer.postprocess(y, [img.shape[:2]])[0] for y in (ours, naive))
    assert _close(ours, ref) >= 0.999
    assert _close(naive, ref) < 0.9, "per-tile GroupNorm statistics should visibly differ"


def test_norm_stats_are_float64_over_all_tiles():
    rng = np.random.default_rng(6)
    x = (1000.0 + rng.standard_normal((1, 64, 60, 50))).astype(np.float32)   # big mean, unit variance
    stats = NormStats(64, 32)
    for r in range(0, 60, 7):
        for c in range(0, 50, 9):
            stats.add(np.ascontiguousarray(x[:, :, r:r + 7, c:c + 9]))
    assert stats.sum.dtype == np.float64 and stats.sq.dtype == np.float64
    mean, rstd = stats.mean_rstd(1e-6)
    g = x.astype(np.float64).reshape(32, -1)
    assert stats.count == g.shape[1]
    assert np.allclose(stats.sum / stats.count, g.mean(1), rtol=1e-12)            # float64 sums
    assert np.allclose(mean[0, ::2, 0, 0], g.mean(1), rtol=1e-7)
    assert np.allclose(rstd[0, ::2, 0, 0], 1 / np.sqrt(g.var(1) + 1e-6), rtol=1e-5)   # var of a 1000-offset


@pytest.fixture
def on_disk(stylizer, tmp_path, monkeypatch):
    """Every intermediate in temporary files under tmp_path."""
    monkeypatch.setenv(TEMP_ENV, str(tmp_path))
    monkeypatch.setattr(streaming_mod, "SMALL_TENSOR", 0)
    ex = dispatch.executor(stylizer)
    ex.ram_store_cap = 0
    yield tmp_path
    ex.ram_store_cap = None


def test_temp_files_removed_on_success(stylizer, style_code, on_disk):
    img = np.random.default_rng(7).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    seen = []
    out, info = dispatch.stylize_one(stylizer, img, style_code, 1.0, 1.0, tile=11,
                                     progress=lambda d, t: seen.append(list(on_disk.iterdir())))
    assert info.peak_disk_bytes > 0 and any(seen), "intermediates went to disk"
    assert list(on_disk.iterdir()) == []
    assert _close(out, stylizer.stylize(img, style_code, streaming="never")) >= 0.999


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_temp_files_removed_on_error_and_ctrl_c(stylizer, style_code, on_disk, exc):
    img = np.random.default_rng(8).integers(0, 256, (40, 36, 3), dtype=np.uint8)

    def progress(done, total):
        if done == total // 2:
            raise exc

    with pytest.raises(type(exc)):
        dispatch.stylize_one(stylizer, img, style_code, 1.0, 1.0, tile=11, progress=progress)
    assert list(on_disk.iterdir()) == []


def test_refused_in_one_line_before_any_work(stylizer, style_code, monkeypatch):
    img = np.zeros((96, 96, 3), np.uint8)
    calls = sum(stylizer.graph_calls.values())
    old = stylizer.size_policy.budget
    try:
        stylizer.set_memory_budget("1M")
        with pytest.raises(ImageTooLarge) as info:
            stylizer.stylize(img, style_code)
        assert "\n" not in str(info.value) and "even streamed" in str(info.value)
        stylizer.set_memory_budget(old)
        monkeypatch.setattr(streaming_mod, "disk_free", lambda _path: 0)
        monkeypatch.setattr(streaming_mod, "SMALL_TENSOR", 0)
        dispatch.executor(stylizer).ram_store_cap = 0
        with pytest.raises(ImageTooLarge, match="temporary disk"):
            stylizer.stylize(img, style_code, streaming="always")
    finally:
        dispatch.executor(stylizer).ram_store_cap = None
        stylizer.set_memory_budget(old)
    assert sum(stylizer.graph_calls.values()) == calls


RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from quantart_runtime import Stylizer, stream_dispatch
    st = Stylizer.load(sys.argv[1], backend="onnxruntime", intra_op_threads=1,
                       fused_attention=False)     # the standard estimate: untiled exceeds the limit
    code = st.encode_style(np.full((32, 32, 3), 128, np.uint8), size=None)
    stream_dispatch.executor(st).runner()          # the segment sessions are part of the loaded model
    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    base_rss, base_vm = vm("VmRSS:"), vm("VmSize:")
    limit = base_vm + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    st.set_memory_budget(sys.argv[3])
    side = int(sys.argv[4])
    untiled = st.size_policy.geometry.peak_bytes(side, side, 1, 64)
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = st.stylize(img, code)
    print(json.dumps({"untiled": untiled, "limit_over": int(sys.argv[2]), "streamed": st.last_run.streamed,
                      "peak_rss_over": vm("VmHWM:") - base_rss, "predicted": st.last_run.predicted_peak_bytes,
                      "shape": list(out.shape)}))
""")


def test_rss_bound_under_rlimit_as(model_dir):
    """At 192², the untiled estimate exceeds the address-space limit; streamed, the run stays under it."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    over, budget = 640 << 20, "300M"
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(model_dir), str(over), budget, "192"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["untiled"] > over, r
    assert r["streamed"] and r["shape"] == [192, 192, 3]
    assert r["peak_rss_over"] <= 300 << 20, r


def test_only_a_memory_bound_plan_bounds_the_heap(stylizer, style_code, tmp_path, monkeypatch):
    """The executor bounds the heap for a plan with intermediates on disk, not for one that fits easily
    (the setting is process-wide, so a roomy run keeps glibc's faster default)."""
    calls = []
    monkeypatch.setattr(streaming_mod, "bound_heap", lambda: calls.append(1) or True)
    img = np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    _, roomy = dispatch.stylize_one(stylizer, img, style_code, 1.0, 1.0, tile=11)
    assert roomy.peak_disk_bytes == 0 and not calls
    monkeypatch.setenv(TEMP_ENV, str(tmp_path))
    monkeypatch.setattr(streaming_mod, "SMALL_TENSOR", 0)
    ex = dispatch.executor(stylizer)
    ex.ram_store_cap = 0
    try:
        _, bound = dispatch.stylize_one(stylizer, img, style_code, 1.0, 1.0, tile=11)
    finally:
        ex.ram_store_cap = None
    assert bound.peak_disk_bytes > 0 and calls


def test_tensorrt_segment_profile_tiles_and_keys(model_dir):
    """The TensorRT streaming plan, computed on CPU (no TensorRT here; the engines are not built): segment
    engines take batch 1, tile windows within max_res and the attention keys of a whole image up to
    max_key_res; a plan's tiles and keys fit that profile, and keys beyond it are refused in one line."""
    from types import SimpleNamespace

    from quantart_runtime.backends.trt_engine import profile_shapes
    from quantart_runtime.tiling import window

    manifest = json.loads((model_dir / "manifest.json").read_text())
    stride = int(manifest["streaming"]["latent_stride"])
    trt = SimpleNamespace(name="tensorrt", model_dir=model_dir, options={"max_res": 256}, device=0)
    ex = streaming_mod.StreamingExecutor(trt, manifest)
    prof = ex.segment_profile()
    assert prof == {"max_res": 256, "max_batch": 1, "max_key_res": streaming_mod.KEY_RES}
    entries = manifest["streaming"]["graphs"]["fp32"]
    attn = next(e for e in entries.values() if any(i["name"] == "k" for i in e["inputs"]))
    shapes = profile_shapes(manifest, attn, prof)
    assert shapes["x"][2][0] == 1 and shapes["x"][2][2:] == [256 // stride] * 2
    assert shapes["k"][2][2:] == [streaming_mod.KEY_RES // stride] * 2 and shapes["k"][0][2:] == [1, 1]
    assert shapes["mean"][2] == attn["inputs"][1]["shape"]                  # fixed axes stay

    h, w = 600, 800
    plan = streaming_mod.streaming_peak(ex, h, w, (64, 64), 1 << 34)
    cap, domain = ex.window_cap(), {"content": (h, w)}
    for p in plan.steps:
        in_shape = ex._shape(p.step["inputs"]["x"], {**domain, "style": (64, 64)})
        for r0, r1, c0, c1 in p.grid:
            rw = window(r0, r1, in_shape[2], p.step["resample"], p.step["pre_halo"], p.step["post_halo"])
            cw = window(c0, c1, in_shape[3], p.step["resample"], p.step["pre_halo"], p.step["post_halo"])
            assert max(rw.stop - rw.start, cw.stop - cw.start) <= cap, p.step["graph"]
    small = SimpleNamespace(name="tensorrt", model_dir=model_dir, options={"max_res": 256, "max_key_res": 256},
                            device=0)
    with pytest.raises(ImageTooLarge, match="max_key_res"):
        streaming_mod.streaming_peak(streaming_mod.StreamingExecutor(small, manifest), h, w, (64, 64), 1 << 34)
