"""quantart_runtime.Stylizer on the exported tiny golden checkpoint (ONNX Runtime, CPU)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from quantart_runtime.util import psnr_uint8, psnr_unit
from runtime_helpers import DATA, STYLE_SIZE, photo, to_uint8, torch_stylize


@pytest.fixture(scope="module")
def torch_model():
    import quantart

    return quantart.load_model(DATA / "tiny_stage2.ckpt").eval()


@pytest.mark.parametrize("case", ["square", "wide"])
def test_graphs_reproduce_golden_cases(stylizer, case):
    """Each graph against the golden intermediate tensors computed with the official code."""
    gold = np.load(DATA / f"tiny_stage2_{case}.npz")
    h = stylizer.content_latent(gold["content"])
    np.testing.assert_allclose(h, gold["content_latent"], atol=1e-4)
    ref, ref_idx = stylizer.style_latent(gold["style"])
    np.testing.assert_array_equal(ref_idx, gold["indices_ref"])
    np.testing.assert_allclose(ref, gold["quant_ref"], atol=1e-5)
    y, idx = stylizer.stylize_latent(h, ref)
    np.testing.assert_array_equal(idx, gold["indices_y"])
    np.testing.assert_allclose(y, gold["quant_y"], atol=1e-5)
    assert psnr_unit(np.clip(stylizer.decode(y), -1, 1), np.clip(gold["output"], -1, 1)) >= 45


@pytest.mark.parametrize("size, ratios", [
    ((32, 32), (1.0, 1.0)),      # square
    ((24, 40), (1.0, 1.0)),      # wide, a multiple of the stride
    ((30, 21), (1.0, 1.0)),      # odd size: reflect-padded to 32x24 and cropped back
    ((32, 48), (0.6, 0.3)),      # discrete-continuous fusion on both sides of the SGA
    ((27, 36), (0.0, 0.5)),
])
def test_stylize_matches_pytorch(stylizer, torch_model, size, ratios):
    from quantart_runtime.images import resize, style_size

    content = photo(*size, index=2)
    style_image = photo(48, 40, index=3, kind="style")
    code = stylizer.encode_style(style_image, size=STYLE_SIZE)
    hs, ws = style_size(48, 40, STYLE_SIZE, 4)
    assert code.size == (hs, ws) == (40, 32)        # shorter side -> 32, aspect kept, stride-rounded
    assert code.latent.shape == (1, 64, 10, 8) and code.indices.shape == (1, 10, 8)
    expected = torch_stylize(torch_model, content, resize(style_image, hs, ws), *ratios)

    x = stylizer.preprocess([content])
    y = stylizer.run_graphs(x, code, *ratios)[0, :, :size[0], :size[1]].transpose(1, 2, 0)
    assert psnr_unit(np.clip(y, -1, 1), expected) >= 45
    out = stylizer.stylize(content, code, content_ratio=ratios[0], output_ratio=ratios[1])
    assert out.shape == content.shape and out.dtype == np.uint8
    assert psnr_uint8(out, to_uint8(expected)) >= 45
    # the style given as an image is encoded at style_size, the same code
    again = stylizer.stylize(content, style_image, *ratios, style_size=STYLE_SIZE)
    np.testing.assert_array_equal(again, out)


def test_mixed_sizes_batched_like_single(stylizer):
    contents = [photo(32, 32, 1), photo(24, 40, 2), photo(30, 31, 3), photo(32, 32, 4), photo(21, 17, 1)]
    code = stylizer.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
    before = stylizer.graph_calls.copy()
    outs = stylizer.stylize(contents, code)
    calls = stylizer.graph_calls - before
    # 32x32, 32x32 and 30x31 share the padded size 32x32: one batch; 24x40 and 21x17 (-> 24x20) alone
    assert calls == {"content_encoder": 3, "sga": 3, "decoder": 3}
    assert [o.shape for o in outs] == [c.shape for c in contents]
    for content, out in zip(contents, outs):
        single = stylizer.stylize(content, code)
        assert np.abs(single.astype(int) - out).max() <= 2
    # batch_size splits a group
    before = stylizer.graph_calls.copy()
    stylizer.stylize(contents[:1] * 3, code, batch_size=2)
    assert (stylizer.graph_calls - before)["decoder"] == 2


def test_style_cache_skips_the_style_encoder(stylizer):
    from quantart_runtime import StyleCode

    stylizer.clear_style_cache()
    style = photo(40, 36, 4, "style")
    content = photo(28, 32, 2)
    before = stylizer.graph_calls["style_encoder"]
    first = stylizer.encode_style(style, size=STYLE_SIZE)
    second = stylizer.encode_style(style.copy(), size=STYLE_SIZE)        # equal pixels, another array
    assert isinstance(first, StyleCode) and second is first
    assert stylizer.graph_calls["style_encoder"] == before + 1
    out1 = stylizer.stylize(content, style, style_size=STYLE_SIZE)
    out2 = stylizer.stylize(content, style, style_size=STYLE_SIZE)
    assert stylizer.graph_calls["style_encoder"] == before + 1
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(out1, stylizer.stylize(content, first))
    # another size or other pixels are another code
    stylizer.encode_style(style, size=2 * STYLE_SIZE)
    changed = style.copy()
    changed[0, 0, 0] ^= 1
    stylizer.encode_style(changed, size=STYLE_SIZE)
    assert stylizer.graph_calls["style_encoder"] == before + 3


def test_style_cache_is_lru(model_dir):
    from quantart_runtime import Stylizer

    st = Stylizer.load(model_dir, backend="onnxruntime", style_cache_size=2)
    a, b, c = (photo(32, 32, i, "style") for i in (1, 2, 3))
    for img in (a, b, a, c):      # c evicts b (a was used more recently)
        st.encode_style(img, size=STYLE_SIZE)
    assert st.graph_calls["style_encoder"] == 3
    st.encode_style(a, size=STYLE_SIZE)
    assert st.graph_calls["style_encoder"] == 3
    st.encode_style(b, size=STYLE_SIZE)
    assert st.graph_calls["style_encoder"] == 4
    st.close()


def test_sessions_do_not_spin_between_graphs(model_dir):
    """The graphs run one after another, each session with its own intra-op pool: pools must not spin
    after their run (a spinning pool steals the next graph's cores; +50 % end to end on 2 cores)."""
    from quantart_runtime import Stylizer

    with Stylizer.load(model_dir, backend="onnxruntime") as st:
        for graph, session in st.runner.sessions.items():
            entry = session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
            assert entry == "0", graph


def test_bad_content_arrays(stylizer):
    from quantart_runtime import ImageError

    code = stylizer.encode_style(photo(32, 32, 1, "style"), size=STYLE_SIZE)
    cases = [
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((32, 32), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((3, 32, 32, 3), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((3, 40, 3), np.uint8), "smaller than one latent cell"),
        ([np.zeros((32, 32, 3), np.uint8), "x.jpg"], "content image 1"),
    ]
    for bad, message in cases:
        with pytest.raises(ImageError, match=message):
            stylizer.stylize(bad, code)
    with pytest.raises(ValueError, match="content_ratio"):
        stylizer.stylize(photo(32, 32), code, content_ratio=1.5)


def _copy_model(model_dir, tmp_path):
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.mark.parametrize("break_it, message", [
    (lambda d: shutil.rmtree(d), "no such directory"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not valid JSON"),
    (lambda d: _edit(d, format_version=99), "format_version 99 is not supported"),
    (lambda d: (d / "sga.onnx").unlink(), "graph file sga.onnx is missing"),
    (lambda d: (d / "decoder.onnx").write_bytes(b"\0" * 10), "decoder.onnx does not match its sha256"),
    (lambda d: _edit(d, kind="stage3"), "kind 'stage3'"),
])
def test_bad_model_directories(model_dir, tmp_path, break_it, message):
    from quantart_runtime import ModelError, Stylizer

    d = _copy_model(model_dir, tmp_path)
    break_it(d)
    with pytest.raises(ModelError, match=message) as info:
        Stylizer.load(d, backend="onnxruntime")
    assert "\n" not in str(info.value) and str(d) in str(info.value)


def _edit(d, **fields):
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(fields)
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_missing_precision_and_backend(model_dir, tmp_path):
    from quantart_runtime import BackendError, ModelError, Stylizer
    from quantart_runtime.backends import available_backends, select_backend

    fp32_only = _copy_model(model_dir, tmp_path)  # the shared export has both precisions: drop fp16
    graphs = json.loads((fp32_only / "manifest.json").read_text())["graphs"]
    del graphs["fp16"]
    _edit(fp32_only, graphs=graphs)
    with pytest.raises(ModelError, match="has no fp16 graphs"):
        Stylizer.load(fp32_only, precision="fp16")
    with pytest.raises(BackendError, match="unknown backend 'mxnet'"):
        Stylizer.load(model_dir, backend="mxnet")
    reasons = available_backends()
    assert reasons["onnxruntime"] == ""
    if reasons["tensorrt"]:
        with pytest.raises(BackendError, match="'tensorrt' is not available"):
            Stylizer.load(model_dir, backend="tensorrt")
        assert select_backend("auto").name == "onnxruntime"


def test_onnxruntime_runner_settings(stylizer):
    from quantart_runtime.backends.onnxruntime import default_threads

    runner = stylizer.runner
    assert runner.name == "onnxruntime" and runner.providers[0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert runner.intra_op_threads == default_threads() >= 1
    assert set(runner.sessions) == {"content_encoder", "style_encoder", "sga", "decoder"}
    sessions = dict(runner.sessions)
    stylizer.stylize(photo(32, 32), photo(32, 32, 1, "style"), style_size=STYLE_SIZE)
    assert all(runner.sessions[k] is v for k, v in sessions.items())   # created once, reused


@pytest.mark.gpu
def test_onnxruntime_cuda_provider(model_dir, stylizer):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu (CUDAExecutionProvider) is not installed here")
    from quantart_runtime import Stylizer

    gpu = Stylizer.load(model_dir, backend="onnxruntime", providers=["CUDAExecutionProvider"])
    if gpu.runner.providers[0] != "CUDAExecutionProvider":
        pytest.skip("no CUDA device visible to onnxruntime")
    assert gpu.runner.use_iobinding
    content, style = photo(32, 40), photo(32, 32, 1, "style")
    out = gpu.stylize(content, style, style_size=STYLE_SIZE)
    ref = stylizer.stylize(content, style, style_size=STYLE_SIZE)
    assert psnr_uint8(out, ref) >= 40
