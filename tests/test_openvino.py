"""OpenVINO runner on the tiny export: FP32 matches ONNX Runtime, BF16 gating, options, cache, batching."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino is not installed (the [cpu] extra)")

GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


def _refs(model_dir):
    from quantart_runtime.manifest import load_manifest
    from quantart_runtime.verify import load_references

    manifest = load_manifest(model_dir)
    # the small verification sizes only: the serving-size (256²) references are for `quantart verify`
    return manifest, [r for r in load_references(model_dir, manifest) if r["content"].shape[1] <= 64]


def _feeds(r):
    one = np.array([1.0], dtype=np.float32)
    x = (r["content"].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1).copy()
    s = (r["style"].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - 1).copy()
    return {"content_encoder": {"image": x}, "style_encoder": {"image": s},
            "sga": {"content_latent": r["content_latent"], "style_latent": r["style_latent"],
                    "content_ratio": one, "output_ratio": one},
            "decoder": {"latent": r["stylized_latent"]}}


def _uint8(image):
    return np.rint((np.clip(image, -1, 1) + 1) * 127.5).astype(np.uint8)


def test_fp32_matches_onnxruntime(model_dir, tmp_path):
    from quantart_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from quantart_runtime.backends.openvino import OpenVINORunner

    manifest, refs = _refs(model_dir)
    with OnnxRuntimeRunner(model_dir, manifest, providers=["CPUExecutionProvider"]) as ort, \
            OpenVINORunner(model_dir, manifest, precision="fp32", cache_dir=tmp_path / "ov") as ov:
        assert ov.plan == {g: "fp32" for g in GRAPHS}
        for r in refs:
            for graph, feeds in _feeds(r).items():
                want, got = ort.infer(graph, feeds), ov.infer(graph, feeds)
                assert sorted(want) == sorted(got)
                for name, a in want.items():
                    b = got[name]
                    assert a.shape == b.shape and a.dtype == b.dtype, (graph, name)
                    if a.dtype == np.int64:
                        np.testing.assert_array_equal(a, b, err_msg=f"{graph}.{name}")
                    elif name == "image":
                        assert np.abs(_uint8(a).astype(int) - _uint8(b)).max() <= 1
                    else:
                        assert float(np.abs(a - b).max()) <= 1e-4, (graph, name)


def test_bf16_on_a_cpu_without_it_is_one_line(model_dir, tmp_path):
    from quantart_runtime import BackendError
    from quantart_runtime.backends.openvino import OpenVINORunner

    manifest, _ = _refs(model_dir)
    runner = OpenVINORunner(model_dir, manifest, precision="bf16", capabilities=["FP32", "INT8"],
                            cache_dir=tmp_path)
    with pytest.raises(BackendError, match="does not report BF16") as info:
        runner.activate()
    assert "\n" not in str(info.value) and not runner.active
    plan_runner = OpenVINORunner(model_dir, manifest, plan={"decoder": "bf16"}, capabilities=["FP32"],
                                 cache_dir=tmp_path)
    with pytest.raises(BackendError, match="use precision fp32"):
        plan_runner.activate()
    # FP32 needs no BF16 units
    with OpenVINORunner(model_dir, manifest, capabilities=["FP32"], cache_dir=tmp_path) as ok:
        assert ok.active


def test_options_and_bad_requests(model_dir):
    from quantart_runtime import BackendError
    from quantart_runtime.backends.openvino import OpenVINORunner

    manifest, _ = _refs(model_dir)
    with pytest.raises(TypeError, match="providers"):
        OpenVINORunner(model_dir, manifest, providers=["CPUExecutionProvider"])
    with pytest.raises(BackendError, match="fp32 or bf16"):
        OpenVINORunner(model_dir, manifest, precision="fp16")
    with pytest.raises(BackendError, match="bad precision plan"):
        OpenVINORunner(model_dir, manifest, plan={"decoder": "int4"})
    with pytest.raises(BackendError, match="hint"):
        OpenVINORunner(model_dir, manifest, hint="FAST")
    ok, reason = OpenVINORunner.is_available()
    assert ok and reason == ""


def test_model_cache_and_batched_requests(model_dir, tmp_path):
    from quantart_runtime.backends.openvino import OpenVINORunner

    manifest, refs = _refs(model_dir)
    cache = tmp_path / "ov"
    feeds = _feeds(refs[0])
    with OpenVINORunner(model_dir, manifest, cache_dir=cache) as runner:
        assert list(cache.iterdir()), "compiled graphs are cached"
        singles = [runner.infer("decoder", {"latent": feeds["decoder"]["latent"][i:i + 1]})["image"]
                   for i in range(len(refs[0]["content"]))]
        batched = runner.infer("decoder", feeds["decoder"])["image"]   # THROUGHPUT twin, split requests
        assert ("decoder", "THROUGHPUT") in runner.compiled
        np.testing.assert_allclose(batched, np.concatenate(singles), atol=1e-5)
    entries = sorted(p.name for p in cache.iterdir())
    with OpenVINORunner(model_dir, manifest, cache_dir=cache) as again:   # second load reads the cache
        again.infer("decoder", {"latent": feeds["decoder"]["latent"][:1]})
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_bf16_tail_keeps_the_encoder_last_stage_fp32(model_dir, tmp_path):
    from quantart_runtime.backends.openvino import OpenVINORunner, cpu_capabilities

    if "BF16" not in cpu_capabilities():
        pytest.skip("this CPU reports no BF16 to OpenVINO")
    manifest, refs = _refs(model_dir)
    feeds = _feeds(refs[0])
    plan = {"content_encoder": "bf16-tail", "style_encoder": "bf16"}
    with OpenVINORunner(model_dir, manifest, plan=plan, cache_dir=tmp_path) as runner:
        convs = {}
        for graph in plan:
            runner.infer(graph, feeds[graph])
            runtime = runner.compiled[(graph, "LATENCY")].get_runtime_model()
            convs[graph] = [op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                            if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
        assert runner.pinned["content_encoder"] > runner.pinned["style_encoder"]
    # conv_out and quant_conv (after norm_out) run FP32, the convolutions before them BF16
    assert convs["content_encoder"][-2:] == ["f32", "f32"] and set(convs["content_encoder"][:-2]) == {"bf16"}
    assert set(convs["style_encoder"]) == {"bf16"}
