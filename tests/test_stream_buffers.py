"""The streaming executor's fast path on the tiny model: GroupNorm statistics from the segment graphs' own
row sums (exact against numpy float64, whichever reference each tile used), and RAM buffers reused
between tensors and runs without ever touching a caller's array or holding more than the plan's cap."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from quantart_runtime import stream_dispatch as dispatch
from quantart_runtime.norm_stats import NormStats
from quantart_runtime.tensor_store import BufferPool, TensorStore


def _rows(x: np.ndarray, ref: np.ndarray):
    """What a segment graph's row_stats outputs hold for tile x (1, C, h, w) around ref (1, C, 1, 1)."""
    d = x - ref
    return d.sum(axis=3), np.square(d).sum(axis=3)


def test_row_sums_with_per_tile_references_match_float64():
    rng = np.random.default_rng(0)
    x = (500.0 + 3 * rng.standard_normal((1, 32, 40, 24))).astype(np.float32)   # large mean, small variance
    rows, cols = NormStats(32, 8), NormStats(32, 8)
    for r0 in range(0, 40, 13):          # full-width bands, each around its own first row's mean
        band = x[:, :, r0:r0 + 13]
        ref = band[:, :, :1].mean(axis=(2, 3), keepdims=True).astype(np.float32)
        rows.add_rows(ref, *_rows(band, ref), band.shape[3])
    for r0 in range(0, 40, 13):
        cols.add(np.ascontiguousarray(x[:, :, r0:r0 + 13]))
    g = x.astype(np.float64).reshape(8, -1)
    assert rows.count == cols.count == g.shape[1]
    assert np.allclose(rows.sum, cols.sum, rtol=1e-12) and np.allclose(rows.sq, cols.sq, rtol=1e-12)
    mean, rstd = rows.mean_rstd(1e-6)
    assert np.allclose(mean[0, ::4, 0, 0], g.mean(1), rtol=1e-7)
    assert np.allclose(rstd[0, ::4, 0, 0], 1 / np.sqrt(g.var(1) + 1e-6), rtol=1e-5)


def test_segment_graphs_give_row_statistics(model_dir):
    """Every output a later GroupNorm reads has <out>_ref/_sum/_sq in its graph, and the manifest says so."""
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    section = manifest["streaming"]
    assert section["version"] >= 2
    entries = section["graphs"]["fp32"]
    with_stats = 0
    for chain in section["chains"].values():
        for step in chain["steps"]:
            names = {o["name"] for o in entries[step["graph"]]["outputs"]}
            for key, tensor in step["outputs"].items():
                normed = bool(section["tensors"][tensor]["groups"])
                assert (key in step["stats"]) == normed
                assert ({f"{key}_ref", f"{key}_sum", f"{key}_sq"} <= names) == normed
                with_stats += normed
    assert with_stats > 10


def test_both_statistics_paths_agree_with_untiled(stylizer, monkeypatch):
    """Whole tiles take the graphs' row sums; column tiles (a halo to leave out) sum their cores here."""
    rng = np.random.default_rng(5)
    code = stylizer.encode_style(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), size=None)
    img = rng.integers(0, 256, (60, 76, 3), dtype=np.uint8)
    ref = stylizer.stylize(img, code, streaming="never")
    calls = {"add": 0, "add_rows": 0}
    for name in calls:
        orig = getattr(NormStats, name)
        monkeypatch.setattr(NormStats, name, lambda self, *a, _o=orig, _n=name: (calls.__setitem__(_n, calls[_n] + 1),
                                                                                 _o(self, *a))[1])
    seen = {}
    for tile in (None, (64, 6)):
        for name in calls:
            calls[name] = 0
        out, _ = dispatch.stylize_one(stylizer, img, code, 1.0, 1.0, tile=tile)
        seen[tile] = dict(calls)
        d = np.abs(out.astype(int) - ref.astype(int))
        assert np.mean(d <= 1) >= 0.999 and d.max() <= 2
    assert seen[None]["add_rows"] > 10 and seen[None]["add"] <= 1          # 1: the style latent, a source
    assert seen[(64, 6)]["add"] > seen[None]["add"] + 10


def test_pool_reuses_within_its_cap_and_never_a_callers_array():
    pool = BufferPool(cap=3 << 20)
    store = TensorStore(pool=pool)
    mine = np.arange(4 * 256 * 256, dtype=np.float32).reshape(1, 4, 256, 256)   # the caller's, 1 MiB
    keep = mine.copy()
    store.put("src", mine)
    store.create("a", (1, 4, 256, 256), np.float32, False)     # 1 MiB
    first = store.whole("a")
    store.free("a")
    store.free("src")                                           # the caller's array: never pooled
    assert pool.held_bytes == 1 << 20
    store.create("b", (1, 4, 256, 256), np.float32, False)
    assert np.shares_memory(store.whole("b"), first)            # reused
    store.whole("b")[...] = 7
    assert np.array_equal(mine, keep)
    for i in range(6):                                          # live + pooled stays within the cap
        store.create(f"c{i}", (1, 4, 256, 256), np.float32, False)
    for i in range(6):
        store.free(f"c{i}")
        assert pool.held_bytes <= max(0, pool.cap - store.ram_bytes)
    store.close()
    assert pool.held_bytes <= pool.cap
    pool.trim(0)
    assert pool.held_bytes == 0


def test_kept_buffers_survive_runs_and_leave_for_untiled_batches(stylizer):
    rng = np.random.default_rng(7)
    code = stylizer.encode_style(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), size=None)
    before = code.latent.copy()
    img = rng.integers(0, 256, (60, 76, 3), dtype=np.uint8)
    a = stylizer.stylize(img, code, streaming="always")
    pool = dispatch.executor(stylizer).pool
    assert pool.held_bytes > 0
    b = stylizer.stylize(img, code, streaming="always")        # a second run on reused buffers: same result
    assert np.array_equal(a, b)
    assert np.array_equal(code.latent, before)                  # the cached style code was never a buffer
    stylizer.stylize([img, img], code, streaming="never")       # a batch sized to the budget: buffers go
    assert pool.held_bytes == 0


def test_a_deadline_stops_a_streamed_image_and_removes_its_files(model_dir, tmp_path, monkeypatch):
    """The service's time limit: a streamed image past its requests' deadline stops at the next tile."""
    import time

    from quantart_runtime import Stylizer
    from quantart_runtime.core import DeadlineExceeded, StylizeCore
    from quantart_runtime.tensor_store import TEMP_ENV

    monkeypatch.setenv(TEMP_ENV, str(tmp_path))
    st = Stylizer.load(model_dir, backend="onnxruntime")
    rng = np.random.default_rng(9)
    st.set_memory_budget("96M")
    code = st.encode_style(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), size=None)
    core = StylizeCore(st, code, streaming="always")
    img = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)
    seen = []
    core.progress = lambda done, total: seen.append(done)
    [err] = core.stylize_many([img], deadline=time.monotonic() - 1)    # already past: stops at tile 1
    assert isinstance(err, DeadlineExceeded) and "of" in str(err) and seen == []
    assert list(tmp_path.iterdir()) == []
    [out] = core.stylize_many([img[:64, :80]], deadline=time.monotonic() + 600)
    assert out.shape == (64, 80, 3) and seen
    st.close()


def test_plan_prefers_full_width_bands(stylizer):
    """Columns split only once bands are BAND_ROWS thin; a step's bands have even heights."""
    from quantart_runtime import streaming

    ex = dispatch.executor(stylizer)
    plan = streaming.streaming_peak(ex, 400, 1400, (64, 64), 160 << 20)
    banded = [p for p in plan.steps if len(p.grid) > 1]
    assert banded, "this budget should need tiles"
    for p in banded:
        rows = sorted({r1 - r0 for r0, r1, _, _ in p.grid})
        cols = {(c0, c1) for _, _, c0, c1 in p.grid}
        if len(cols) > 1:
            assert rows[-1] <= streaming.BAND_ROWS, p.step["graph"]
        assert rows[-1] - rows[0] <= 1                       # even bands, no sliver at the bottom


def test_disk_store_bands_and_column_windows_round_trip(tmp_path):
    """The on-disk store (CHW files): full-width bands and ragged column windows read back what was written,
    tiles written at offsets included, and the directory goes on close."""
    rng = np.random.default_rng(11)
    full = rng.standard_normal((1, 5, 23, 17)).astype(np.float32)
    store = TensorStore(1 << 20, parent=str(tmp_path))
    store.create("x", full.shape, np.float32, True)
    for r in range(0, 23, 6):                                   # bands (the last one ragged)
        store.write("x", r, 0, full[:, :, r:r + 6])
    store.write("x", 4, 3, full[:, :, 10:13, 1:8])              # a column tile at an offset
    full[:, :, 4:7, 3:10] = full[:, :, 10:13, 1:8]
    assert np.array_equal(store.read("x", 2, 19, 0, 17, scratch="a"), full[:, :, 2:19])
    assert np.array_equal(store.read("x", 3, 9, 2, 11), full[:, :, 3:9, 2:11])
    assert np.array_equal(store.whole("x"), full)
    assert any(tmp_path.iterdir())
    store.close()
    assert not any(tmp_path.iterdir())


def test_freed_files_are_reused_within_the_plans_disk(tmp_path):
    """A freed disk tensor's file serves the next one (no fresh page-cache pages), contents are the new
    tensor's, live + kept files never exceed the plan's disk, and close removes them all."""
    rng = np.random.default_rng(12)
    shape = (1, 4, 16, 16)
    nbytes = int(np.prod(shape)) * 4
    store = TensorStore(2 * nbytes, parent=str(tmp_path))
    a, b, c = (rng.standard_normal(shape).astype(np.float32) for _ in range(3))
    store.put("a", a, on_disk=True)
    store.put("b", b, on_disk=True)
    files = sorted(p.name for p in Path(store.dir).iterdir())
    store.free("a")
    assert store.spare_bytes == nbytes and len(list(Path(store.dir).iterdir())) == 2   # kept, not deleted
    store.create("c", (1, 4, 8, 16), np.float32, True)          # a smaller tensor in the kept file
    store.write("c", 0, 0, c[:, :, :8])
    assert sorted(p.name for p in Path(store.dir).iterdir()) == files and store.spare_bytes == 0
    assert np.array_equal(store.whole("c"), c[:, :, :8]) and np.array_equal(store.whole("b"), b)
    assert (Path(store.dir) / "a").stat().st_size == nbytes // 2  # truncated to the new tensor
    store.free("b")
    store.free("c")
    assert store.disk_bytes == 0 and store.disk_bytes + store.spare_bytes <= 2 * nbytes
    assert store.peak_disk_bytes <= 2 * nbytes
    store.close()
    assert not any(tmp_path.iterdir())


def test_kept_files_give_way_to_the_plans_disk(tmp_path):
    """Kept files go (smallest first) when a new tensor would take live + kept past ``disk_needed``."""
    rng = np.random.default_rng(13)
    small, big = (1, 2, 8, 8), (1, 2, 16, 16)
    store = TensorStore(4 * 2 * 16 * 16 + 4 * 2 * 8 * 8, parent=str(tmp_path))
    store.put("s", rng.standard_normal(small).astype(np.float32), on_disk=True)
    store.free("s")
    store.put("x", rng.standard_normal(big).astype(np.float32), on_disk=True)    # reuses s's file
    store.put("y", rng.standard_normal(small).astype(np.float32), on_disk=True)
    store.free("x")
    store.free("y")
    assert store.spare_bytes <= store.disk_needed
    big_tensor = rng.standard_normal((1, 2, 20, 20)).astype(np.float32)          # needs a kept file gone
    store.put("z", big_tensor, on_disk=True)
    assert store.disk_bytes + store.spare_bytes <= store.disk_needed + big_tensor.nbytes - 4 * 2 * 16 * 16
    assert np.array_equal(store.whole("z"), big_tensor)
    assert len(list(Path(store.dir).iterdir())) == 1 + len(store._spare)
    store.close()
    assert not any(tmp_path.iterdir())


def test_arena_is_released_only_before_a_larger_tile_and_after_the_last():
    from quantart_runtime.streaming import _arena_releases

    def wins(*sizes):
        return [(range(0, h), range(0, w)) for h, w in sizes]

    # a step's bands: the top one (halo below only) smaller, the middle ones equal, the last smaller
    assert _arena_releases(wins((18, 64), (20, 64), (20, 64), (20, 64), (18, 64))) == [True, False, False, False, True]
    assert _arena_releases(wins((20, 64), (21, 64), (20, 64))) == [True, False, True]    # ragged rows
    assert _arena_releases(wins((20, 30), (20, 32), (20, 30))) == [True, False, True]    # wider column tile
    assert _arena_releases(wins((8, 8))) == [True]


def test_memory_bound_runs_reuse_buffers_only_within_each_steps_room(stylizer, tmp_path, monkeypatch):
    """A memory-bound run (intermediates on disk) reuses freed RAM buffers, but live + pooled never passes
    the current step's room (the predicted peak less its tile's work), and nothing stays pooled after."""
    from quantart_runtime import streaming, tensor_store
    from quantart_runtime.tensor_store import TEMP_ENV

    rng = np.random.default_rng(14)
    code = stylizer.encode_style(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), size=None)
    img = rng.integers(0, 256, (60, 76, 3), dtype=np.uint8)
    ref = stylizer.stylize(img, code, streaming="never")
    monkeypatch.setenv(TEMP_ENV, str(tmp_path))
    monkeypatch.setattr(streaming, "SMALL_TENSOR", 0)
    ex = dispatch.executor(stylizer)
    ex.ram_store_cap = 600_000                  # some tensors in RAM, the rest in files
    seen, fresh = [], []
    trim = BufferPool._trim

    def checked(self, cap, live):
        trim(self, cap, live)
        seen.append((cap, live, sum(b.nbytes for b in self._free)))

    monkeypatch.setattr(BufferPool, "_trim", checked)
    make = tensor_store.fresh_buffer
    monkeypatch.setattr(tensor_store, "fresh_buffer", lambda n: (fresh.append(n), make(n))[1])
    creates = []
    create = TensorStore.create
    monkeypatch.setattr(TensorStore, "create", lambda self, n, shape, dt, disk: (creates.append(disk),
                                                                               create(self, n, shape, dt, disk))[1])
    try:
        out, info = dispatch.stylize_one(stylizer, img, code, 1.0, 1.0, tile=11)
    finally:
        ex.ram_store_cap = None
    assert info.peak_disk_bytes > 0 and any(creates) and not all(creates)   # memory-bound, RAM and disk
    held = [(cap, live, pooled) for cap, live, pooled in seen if cap is not None and pooled]
    assert held, "freed buffers were kept for reuse"
    assert all(live + pooled <= cap <= info.predicted_peak_bytes for cap, live, pooled in held)
    assert len(fresh) < creates.count(False)                                # some RAM tensors reused a buffer
    assert ex.pool.held_bytes == 0 and list(tmp_path.iterdir()) == []
    d = np.abs(out.astype(int) - ref.astype(int))
    assert np.mean(d <= 1) >= 0.999 and d.max() <= 2


def test_a_failed_background_write_raises_where_the_tensor_is_read(tmp_path, monkeypatch):
    """File writes run on the store's writer thread: a short write (disk full) raises at the next read of
    that tensor, not silently; close still removes the directory."""
    from quantart_runtime import tensor_store

    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    store = TensorStore(1 << 20, parent=str(tmp_path))
    store.put("ok", x, on_disk=True)
    assert np.array_equal(store.whole("ok"), x)                  # a read waits for its write
    monkeypatch.setattr(tensor_store.os, "pwrite", lambda fd, data, offset: 0)
    store.put("full", x, on_disk=True)
    try:
        store.whole("full")
    except OSError as e:
        assert "short write" in str(e)
    else:
        raise AssertionError("the failed write went unnoticed")
    store.put("again", x, on_disk=True)                          # in flight at close: finished, dropped
    store.close()
    assert not any(tmp_path.iterdir())


def test_stores_left_by_killed_processes_are_swept(tmp_path):
    """A SIGKILLed run leaves its directory: the next store removes it once its pid is gone and nobody has
    touched it for STALE_SECONDS; a live owner's, a recent one's and other directories stay."""
    import os
    import subprocess
    import sys

    from quantart_runtime import tensor_store

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / f"{tensor_store.PREFIX}{dead}-abc"
    recent = tmp_path / f"{tensor_store.PREFIX}{dead}-def"
    mine = tmp_path / f"{tensor_store.PREFIX}{os.getpid()}-ghi"
    other = tmp_path / "quantart-stream-notapid"
    for d in (stale, recent, mine, other):
        d.mkdir()
        (d / "x").write_bytes(b"1" * 10)
    long_ago = stale.stat().st_mtime - tensor_store.STALE_SECONDS - 10
    for d in (stale, mine, other):
        os.utime(d, (long_ago, long_ago))
    store = TensorStore(1 << 20, parent=str(tmp_path))
    store.put("x", np.zeros((1, 1, 4, 4), np.float32), on_disk=True)
    left = {p.name for p in tmp_path.iterdir()}
    assert stale.name not in left and {recent.name, mine.name, other.name} <= left
    assert Path(store.dir).name.startswith(f"{tensor_store.PREFIX}{os.getpid()}-")
    store.close()
