"""The device data path on the CPU: ONNX Runtime OrtValues stand where device buffers stand on a GPU.

The same Stylizer code runs on ONNX Runtime CPU (OrtValues in host memory) and CUDA / TensorRT
(device memory): these tests count the copies the runner makes (one upload per batch, one download
per batch, the style code and ratios uploaded once and broadcast where they live) and check that the
latents go from graph to graph as native values, never through numpy. Plus the Runner seam's
contract (activation state, feed checks, unknown options, cleanup after a failed activation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quantart_runtime.backends.base import Runner
from runtime_helpers import STYLE_SIZE, photo

ort = pytest.importorskip("onnxruntime")


@pytest.fixture()
def fresh(model_dir):
    from quantart_runtime import Stylizer

    st = Stylizer.load(model_dir, backend="onnxruntime", providers=["CPUExecutionProvider"])
    yield st
    st.close()


def _record_feeds(runner):
    seen = []
    real = runner.infer

    def infer(graph, feeds, host_outputs=True):
        seen.append((graph, {k: type(v).__name__ for k, v in feeds.items()}, host_outputs))
        return real(graph, feeds, host_outputs=host_outputs)

    runner.infer = infer
    return seen


def test_one_upload_and_one_download_per_batch(fresh):
    runner = fresh.runner
    style = fresh.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
    contents = [photo(32, 32, 1 + seed % 4) for seed in range(5)]
    runner.transfers.clear()
    seen = _record_feeds(runner)
    first = fresh.stylize(contents, style, content_ratio=0.8, batch_size=2)     # batches of 2, 2, 1
    assert dict(runner.transfers) == {"h2d": 3 + 1 + 2, "d2h": 3, "d2d": 1}    # + style once, 2 ratios once
    # graph-to-graph hand-off: the latents and the style code arrive as OrtValues, never numpy
    for graph, kinds, host in seen:
        if graph == "content_encoder":
            assert kinds == {"image": "ndarray"} and host is False
        elif graph == "sga":
            assert set(kinds.values()) == {"OrtValue"} and host is False
        else:
            assert graph == "decoder" and kinds == {"latent": "OrtValue"} and host is True
    assert [g for g, _, _ in seen] == ["content_encoder", "sga", "decoder"] * 3

    runner.transfers.clear()
    again = fresh.stylize(contents, style, content_ratio=0.8, batch_size=2)
    assert dict(runner.transfers) == {"h2d": 3, "d2h": 3}                      # style, ratios, broadcast reused
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_device_path_equals_the_host_path(fresh):
    """The OrtValue path computes exactly what numpy feeds through the same sessions compute."""
    style = fresh.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
    x = fresh.preprocess([photo(32, 40, 1 + seed) for seed in range(3)])
    device = fresh.run_graphs(x, style, 0.7, 0.9)
    h = fresh.content_latent(x)
    y, _ = fresh.stylize_latent(h, np.repeat(style.latent, 3, axis=0), 0.7, 0.9)
    np.testing.assert_array_equal(device, fresh.decode(y))


def test_broadcast_on_the_device(fresh):
    runner = fresh.runner
    one = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    dev = runner.to_device(one)
    assert runner.is_device_value(dev)
    many = runner.broadcast(dev, 3)
    assert runner.value_shape(many) == (3, 2, 3, 4)
    np.testing.assert_array_equal(runner.to_host(many), np.repeat(one, 3, axis=0))
    with pytest.raises(ValueError, match="batch-1"):
        runner.broadcast(many, 2)
    np.testing.assert_array_equal(runner.broadcast(one, 2), np.repeat(one, 2, axis=0))   # numpy stays numpy


def test_feeds_are_checked_against_the_manifest(fresh):
    runner = fresh.runner
    image = np.zeros((1, 3, 32, 32), np.float32)
    with pytest.raises(ValueError, match="the graph takes"):
        runner.infer("content_encoder", {"picture": image})
    with pytest.raises(ValueError, match="dtype float64"):
        runner.infer("content_encoder", {"image": image.astype(np.float64)})
    with pytest.raises(ValueError, match="rank 3"):
        runner.infer("content_encoder", {"image": image[0]})
    with pytest.raises(ValueError, match="rank 3"):                            # device values too
        runner.infer("content_encoder", {"image": runner.to_device(image[0])})
    with pytest.raises(KeyError, match="no graph"):
        runner.infer("nope", {})
    with pytest.raises(ValueError, match="not a numpy array"):
        runner.infer("content_encoder", {"image": [[0.0]]})


def test_unknown_options_and_state(model_dir):
    from quantart_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from quantart_runtime.manifest import load_manifest

    manifest = load_manifest(model_dir)
    with pytest.raises(TypeError, match="keep_on_device, turbo"):
        OnnxRuntimeRunner(model_dir, manifest, turbo=True, keep_on_device=("x",))
    runner = OnnxRuntimeRunner(model_dir, manifest, providers=["CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer("decoder", {})
    with pytest.raises(RuntimeError, match="before activate"):
        runner.to_device(np.zeros(1, np.float32))
    with runner:
        assert runner.active and runner.sessions
    assert not runner.active and not runner.sessions


def test_failed_activation_frees_what_it_created():
    """An error inside activate_impl (e.g. an engine build) must not leak what was
    created before it (the TensorRT runner's stream and event): the base calls deactivate_impl."""
    freed = []

    class Half(Runner):
        name = "half"

        def activate_impl(self):
            self.stream = "stream"
            raise RuntimeError("engine build failed")

        def deactivate_impl(self):
            freed.append(getattr(self, "stream", None))

    runner = Half("dir", {"graphs": {"fp32": {}}})
    with pytest.raises(RuntimeError, match="engine build failed"):
        runner.activate()
    assert freed == ["stream"] and not runner.active


def test_each_graph_is_hashed_once_per_load(model_dir, monkeypatch):
    """load_manifest hashes each graph file once and keeps the digests for later steps (the TensorRT
    engine cache key reads them instead of hashing again)."""
    import quantart_runtime.manifest as mf

    calls = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda path: calls.append(Path(path).name) or real(path))
    manifest = mf.load_manifest(model_dir)
    files = {e["file"]: e["sha256"] for e in manifest["graphs"]["fp32"].values()}
    assert sorted(calls) == sorted(files)
    assert mf.verified_digests(manifest) == files
    assert mf.verified_digests(mf.load_manifest(model_dir, verify=False)) == {}


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 31, 32, 33])
def test_broadcast_by_doubling(rows):
    """cuda_mem.broadcast_rows's copy plan (what the GPU runners queue as device-to-device copies),
    executed here on a bytearray standing for device memory: every row ends up a copy of the source,
    in 1 + ceil(log2(rows)) copies, none overlapping or reading unwritten bytes."""
    from quantart_runtime.backends.cuda_mem import broadcast_rows

    row = 12
    memory = bytearray(row) + bytes(range(1, row + 1)) + bytearray(row * rows)     # [pad][src][dst...]
    src, dst = row, 2 * row
    written = set(range(src, src + row))

    def copy(d, s, n, stream):
        assert set(range(s, s + n)) <= written and not (set(range(d, d + n)) & set(range(s, s + n)))
        memory[d:d + n] = memory[s:s + n]
        written.update(range(d, d + n))

    calls = broadcast_rows(dst, src, row, rows, None, copy=copy)
    assert calls == 1 + int(np.ceil(np.log2(rows)))
    assert bytes(memory[dst:]) == bytes(range(1, row + 1)) * rows


@pytest.mark.gpu
def test_cuda_device_path_counts_and_matches_cpu(model_dir, fresh):
    """GPU check (ONNX Runtime CUDA): the same copy counts as on the CPU, the latents on the device
    (OrtValues on "cuda"), pinned staging with cuda-python, and the images close to the CPU path."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed here")
    from quantart_runtime import Stylizer

    gpu = Stylizer.load(model_dir, backend="onnxruntime", providers=["CUDAExecutionProvider"])
    try:
        if gpu.runner.device_type != "cuda":
            pytest.skip("no CUDA device visible to onnxruntime")
        style_cpu = fresh.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
        style_gpu = gpu.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
        contents = [photo(32, 32, 1 + seed % 4) for seed in range(5)]
        gpu.runner.transfers.clear()
        out = gpu.stylize(contents, style_gpu, batch_size=2)
        assert dict(gpu.runner.transfers) == {"h2d": 3 + 1 + 2, "d2h": 3, "d2d": 1}
        ref = fresh.stylize(contents, style_cpu, batch_size=2)
        for a, b in zip(out, ref):
            assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0
    finally:
        gpu.close()


def test_next_batch_is_preprocessed_while_the_current_one_runs(fresh, monkeypatch):
    """While run_graphs works on batch n, batch n+1 is being preprocessed in the worker thread: each
    run_graphs call (but the last) waits until the next preprocess has started, which would never
    happen if preprocessing only followed execution."""
    import threading

    started, threads = [], []
    events = [threading.Event() for _ in range(3)]
    real_pre, real_run = fresh.preprocess, fresh.run_graphs

    def preprocess(contents):
        n = len(started)
        started.append(n)
        threads.append(threading.current_thread().name)
        events[n].set()
        return real_pre(contents)

    calls = []

    def run_graphs(x, style, *args):
        n = len(calls)
        calls.append(n)
        if n + 1 < len(events):
            assert events[n + 1].wait(timeout=60), f"batch {n + 1} was not preprocessed during batch {n}"
        return real_run(x, style, *args)

    monkeypatch.setattr(fresh, "preprocess", preprocess)
    monkeypatch.setattr(fresh, "run_graphs", run_graphs)
    style = fresh.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
    fresh.stylize([photo(32, 32, 1 + i % 4) for i in range(6)], style, batch_size=2)
    assert calls == [0, 1, 2] and all(t.startswith("quantart-preprocess") for t in threads)
