"""INT8 through NNCF + OpenVINO on the tiny Stage 2 model: export with --int8-calibration and its gate,
the runner's int8 precision reading the stored IR, the missing-IR errors, and plans that include INT8
only where it is verified."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("openvino", reason="openvino is not installed (the [cpu] extra)")

GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


def _needs_nncf():
    pytest.importorskip("nncf", reason="nncf is not installed (the [int8] extra)")


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory, assets_dir):
    """The sample photos and artworks in one directory, plus a file that is not an image."""
    root = tmp_path_factory.mktemp("calibration")
    for kind in ("content", "style"):
        for path in sorted((assets_dir / kind).glob("*.jpg")):
            shutil.copy(path, root / f"{kind}_{path.name}")
    (root / "notes.jpg").write_text("not an image")   # skipped, the others calibrate
    return root


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, calibration_dir, data_dir):
    """tests/data/tiny_stage2.ckpt exported through the CLI with --int8-calibration (FP32, opt_res 64)."""
    _needs_nncf()
    from quantart_export.cli import main

    out = tmp_path_factory.mktemp("int8") / "tiny_int8_onnx"
    result = CliRunner().invoke(main, [str(data_dir / "tiny_stage2.ckpt"), "--out", str(out), "--verify-res",
                                       "32x32,32x48",
                                       "--opt-res", "64", "--no-verify", "--int8-calibration", str(calibration_dir)])
    assert result.exit_code == 0, result.output
    return out, result


def _manifest(model_dir):
    return json.loads((model_dir / "manifest.json").read_text())


def test_export_quantizes_gates_and_records_each_graph(int8_export):
    from quantart_runtime.util import sha256_file

    out, result = int8_export
    assert "Statistics collection" not in result.stdout     # NNCF's progress bars stay off stdout
    section = _manifest(out)["int8"]
    gate = section["gate"]
    assert section["calibration"]["images"] == 8 and section["calibration"]["resolution"] == "64x64"
    assert sorted(gate["verified"] + gate["failed"]) == ["content_encoder", "decoder", "style_encoder"]
    assert "sga" in gate["not_quantized"]
    by_graph = {}
    for check in gate["checks"]:
        by_graph.setdefault(check["graph"], []).append(check["passed"])
    for graph in gate["verified"]:          # kept: its checks pass, its IR is stored and hashed
        entry = section["graphs"][graph]
        assert all(by_graph[graph]), graph
        assert sha256_file(out / entry["file"]) == entry["sha256"]
        assert sha256_file(out / entry["weights"]) == entry["weights_sha256"]
    for graph in gate["failed"]:            # recorded as failed, its IR not kept
        assert not all(by_graph[graph]) and graph not in section["graphs"]
        assert not (out / f"{graph}.int8.xml").exists() and not (out / f"{graph}.int8.bin").exists()
    # the tiny model's near-tied content tokens flip under INT8; its decoder stays above 30 dB
    assert "content_encoder" in gate["failed"] and gate["verified"] == ["decoder"]


def test_runner_int8_runs_the_stored_ir(int8_export):
    from quantart_runtime.backends.openvino import OpenVINORunner
    from quantart_runtime.manifest import load_manifest
    from quantart_runtime.util import psnr_uint8
    from quantart_runtime.verify import load_references

    out, _ = int8_export
    manifest = load_manifest(out)
    ref = load_references(out, manifest)[0]
    with OpenVINORunner(out, manifest, precision="int8", cache_dir=False) as runner:
        assert runner.plan == {"content_encoder": "fp32", "style_encoder": "fp32", "sga": "fp32", "decoder": "int8"}
        image = runner.infer("decoder", {"latent": ref["stylized_latent"]})["image"]
        runtime = runner.compiled[("decoder", "LATENCY")].get_runtime_model()
        convs = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
    assert convs and convs <= {"i8", "u8"}, f"convolutions ran {convs}, not INT8"
    ours = np.rint((np.clip(image, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    assert psnr_uint8(ours, ref["image"]) >= 30.0


def test_altered_int8_ir_is_refused(int8_export, tmp_path):
    from quantart_runtime import ModelError
    from quantart_runtime.backends.openvino import OpenVINORunner
    from quantart_runtime.manifest import load_manifest

    out, _ = int8_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "decoder.int8.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    runner = OpenVINORunner(copy, load_manifest(copy), precision="int8", cache_dir=False)
    with pytest.raises(ModelError, match="decoder.int8.bin does not match its sha256"):
        runner.activate()


def test_missing_int8_ir_is_a_one_line_error(model_dir, int8_export):
    from quantart.cli import main
    from quantart_runtime import BackendError, Stylizer
    from quantart_runtime.backends.openvino import OpenVINORunner
    from quantart_runtime.manifest import load_manifest

    with pytest.raises(BackendError, match="has no INT8 IR for any graph .*--int8-calibration") as info:
        OpenVINORunner(model_dir, load_manifest(model_dir), precision="int8")
    assert "\n" not in str(info.value)
    out, _ = int8_export   # a graph that failed the gate has no IR to run
    with pytest.raises(BackendError, match="no INT8 IR for content_encoder"):
        OpenVINORunner(out, load_manifest(out), plan={"content_encoder": "int8"})
    with pytest.raises(BackendError, match="runs on the openvino backend"):
        Stylizer.load(out, backend="onnxruntime", precision="int8")
    result = CliRunner().invoke(main, ["verify", str(model_dir), "--precision", "int8"])
    assert result.exit_code == 2 and "has no INT8 IR" in result.output


def test_plan_has_int8_only_where_verified(int8_export, tmp_path, monkeypatch):
    import openvino as ov

    from quantart_export.int8 import _entry, int8_file, quantize_graph
    from quantart_runtime.verify import int8_graphs, plan_for

    monkeypatch.setenv("QUANTART_CACHE_DIR", str(tmp_path / "cache"))
    out, _ = int8_export
    result = plan_for(out, "openvino", "int8", cache_dir=False)
    assert result.plan == {"content_encoder": "fp32", "style_encoder": "fp32", "sga": "fp32", "decoder": "int8"}
    assert {c.graph for c in result.checks} == {"decoder", "chain"} and all(c.passed for c in result.checks)
    assert plan_for(out, "openvino", "int8", cache_dir=False).cached

    # an INT8 content encoder added behind the export's back is judged here too, and stays FP32
    _needs_nncf()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = _manifest(copy)
    x = (np.asarray(np.random.default_rng(0).integers(0, 256, (4, 1, 3, 64, 64)), np.float32) / 127.5 - 1)
    model = quantize_graph(ov.Core(), copy / "content_encoder.onnx", [{"image": v} for v in x])
    ov.save_model(model, str(copy / int8_file("content_encoder")), compress_to_fp16=False)
    manifest["int8"]["graphs"]["content_encoder"] = _entry(copy, "content_encoder",
                                                           manifest["graphs"]["fp32"]["content_encoder"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "content_encoder" in int8_graphs(manifest)
    judged = plan_for(copy, "openvino", "int8", cache_dir=False)
    check = next(c for c in judged.checks if c.graph == "content_encoder")
    assert not check.passed and judged.plan["content_encoder"] == "fp32" and judged.plan["decoder"] == "int8"


def test_bad_calibration_input_is_one_line(tmp_path, data_dir):
    _needs_nncf()
    from quantart_export.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    for calib, message in ((tmp_path / "missing", "no such directory"), (empty, "holds no image files")):
        out = tmp_path / "out"
        result = CliRunner().invoke(main, [str(data_dir / "tiny_stage2.ckpt"), "--out", str(out), "--no-verify",
                                           "--int8-calibration", str(calib)])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not out.exists()
    result = CliRunner().invoke(main, [str(data_dir / "tiny_stage1.ckpt"), "--out", str(tmp_path / "s1"),
                                       "--no-verify", "--int8-calibration", str(empty)])
    assert result.exit_code == 2 and "Stage 2" in result.output
    from PIL import Image

    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(one / "a.png")
    result = CliRunner().invoke(main, [str(data_dir / "tiny_stage2.ckpt"), "--out", str(tmp_path / "fp16"),
                                       "--no-verify", "--precision", "fp16", "--int8-calibration", str(one)])
    assert result.exit_code == 2 and "use --precision fp32 or both" in result.output


def test_bench_int8_row_needs_the_ir(model_dir, int8_export):
    from quantart_benchmarks.runtime_backends import availability

    ok, reason = availability("openvino-int8", _manifest(model_dir))
    assert not ok and "--int8-calibration" in reason
    ok, reason = availability("openvino-int8", _manifest(int8_export[0]))
    assert ok and reason == ""
