"""INT8 through NNCF + OpenVINO on the tiny Stage 2 model: export with --int8-calibration and its gate,
the runner's int8 precision reading the stored IR, the missing-IR errors, and plans that include INT8
only where it is verified.

NNCF's accuracy control runs in a child process (``_export_in_child``), as a user runs
``quantart-export``: after it had run inside the pytest process, a later test's ``subprocess.run``
died with SIGSEGV in glibc's malloc (heap corrupted; reproducible in the full suite only, never in
this module alone). The tests read what the export wrote, so nothing is lost by the isolation.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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


_CHILD = textwrap.dedent("""
    import sys
    from quantart_export import int8_accuracy
    from quantart_export.cli import main
    if sys.argv[1] == "unreachable-gate":          # every graph fails its gate
        int8_accuracy.PSNR_GATE_DB = int8_accuracy.PSNR_CAP_DB + 1
        int8_accuracy.TOKEN_GATE = 1.01
    main(sys.argv[2:])
""")


def _export_in_child(args: list, gate: str = "as-shipped") -> subprocess.CompletedProcess:
    """``quantart-export ARGS`` in a child process (see the module docstring); ``gate="unreachable-gate"``
    makes every graph fail the INT8 gate."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _CHILD, gate, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[1], timeout=1200)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, calibration_dir, data_dir):
    """tests/data/tiny_stage2.ckpt exported through the CLI with --int8-calibration (FP32, opt_res 32,
    at most one layer group reverted per graph: accuracy control's ranking is the slow part)."""
    _needs_nncf()
    out = tmp_path_factory.mktemp("int8") / "tiny_int8_onnx"
    result = _export_in_child([data_dir / "tiny_stage2.ckpt", "--out", out, "--verify-res", "32x32,32x48",
                               "--opt-res", "32", "--no-verify", "--int8-calibration", calibration_dir,
                               "--int8-max-fp32-layers", "1"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


def _manifest(model_dir):
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_export_quantizes_gates_and_records_each_graph(int8_export):
    from quantart_runtime.util import sha256_file

    out, result = int8_export
    assert "Statistics collection" not in result.stdout     # NNCF's progress bars stay off stdout
    section = _manifest(out)["int8"]
    gate, calib = section["gate"], section["calibration"]
    # 8 sample images split, seeded, into disjoint sets; the non-image file is left out
    assert calib["calibration_images"] + calib["validation_images"] == 8 and calib["unreadable_left_out"] == 1
    assert calib["calibration_samples"] == 4 * calib["calibration_images"] and calib["resolution"] == "32x32"
    assert calib["calibration_sha256"] != calib["validation_sha256"] and calib["max_fp32_layers"] == 1
    assert sorted(gate["verified"] + gate["failed"]) == ["content_encoder", "decoder", "style_encoder"]
    assert "sga" in gate["not_quantized"]
    for record in section["accuracy_control"].values():   # every graph: metric, layers, ranking
        assert record["fp32_layer_limit"] == 1 and record["int8_layers"] > 0
        assert record["passed"] == (record["value"] >= record["gate"])
        assert len(record["sensitivity"]) <= 10
    by_graph = {}
    for check in gate["checks"]:
        by_graph.setdefault(check["graph"], []).append(check["passed"])
    for graph in gate["verified"]:          # kept: its checks pass, its IR is stored and hashed
        entry = section["graphs"][graph]
        assert all(by_graph[graph]) and section["accuracy_control"][graph]["passed"], graph
        assert entry["precision"] == ("int8-mixed" if entry["fp32_layers"] else "int8")
        assert entry["fp32_layers"] == section["accuracy_control"][graph]["fp32_layers"]
        assert sha256_file(out / entry["file"]) == entry["sha256"]
        assert sha256_file(out / entry["weights"]) == entry["weights_sha256"]
    for graph in gate["failed"]:            # recorded as failed, its IR not kept
        assert graph not in section["graphs"]
        assert not (out / f"{graph}.int8.xml").exists() and not (out / f"{graph}.int8.bin").exists()
    assert "decoder" in gate["verified"]    # the tiny model's decoder stays above 30 dB


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_runner_int8_runs_the_stored_ir(int8_export):
    from quantart_runtime.backends.openvino import OpenVINORunner
    from quantart_runtime.manifest import load_manifest
    from quantart_runtime.util import psnr_uint8
    from quantart_runtime.verify import load_references

    out, _ = int8_export
    manifest = load_manifest(out)
    ref = load_references(out, manifest)[0]
    with OpenVINORunner(out, manifest, precision="int8", cache_dir=False) as runner:
        int8 = _manifest(out)["int8"]["graphs"]
        assert runner.plan == {g: int8[g]["precision"] if g in int8 else "fp32" for g in GRAPHS}
        image = runner.infer("decoder", {"latent": ref["stylized_latent"]})["image"]
        runtime = runner.compiled[("decoder", "LATENCY")].get_runtime_model()
        convs = {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                 if op.get_rt_info()["layerType"].astype(str) == "Convolution"}
    assert convs and convs <= {"i8", "u8"}, f"convolutions ran {convs}, not INT8"
    ours = np.rint((np.clip(image, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    assert psnr_uint8(ours, ref["image"]) >= 30.0


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_altered_int8_ir_is_refused(int8_export, tmp_path):
    from quantart_runtime import ModelError
    from quantart_runtime.manifest import int8_digests, load_manifest
    from quantart_runtime.verify import plan_cache_path

    out, _ = int8_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = load_manifest(copy)                       # the INT8 record is read back and its files hashed
    assert {"decoder.int8.xml", "decoder.int8.bin"} <= set(manifest["_sha256"])
    before = int8_digests(copy, manifest)
    weights = copy / "decoder.int8.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="decoder.int8.bin does not match its sha256"):
        load_manifest(copy)                              # load_manifest checks them, not the runner
    after = int8_digests(copy, manifest)
    assert after["decoder.int8.bin"] != before["decoder.int8.bin"]
    # the plan cache key includes the INT8 files' hashes (same manifest, other INT8 file: other plan)
    key = [plan_cache_path("ab" * 32, "openvino", "int8", "cpu", d) for d in (before, after, None)]
    assert len(set(key)) == 3


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
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


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_plan_has_int8_only_where_verified(int8_export, tmp_path, monkeypatch):
    import openvino as ov

    from quantart_export.int8 import _entry, int8_file, quantize_graph
    from quantart_runtime.verify import int8_graphs, plan_for

    monkeypatch.setenv("QUANTART_CACHE_DIR", str(tmp_path / "cache"))
    out, _ = int8_export
    result = plan_for(out, "openvino", "int8", cache_dir=False)
    int8 = _manifest(out)["int8"]["graphs"]
    assert result.plan == {g: int8[g]["precision"] if g in int8 else "fp32" for g in GRAPHS}
    assert {c.graph for c in result.checks} == set(int8) | {"chain"} and all(c.passed for c in result.checks)
    assert plan_for(out, "openvino", "int8", cache_dir=False).cached
    # auto times the verified INT8 plan as one more CPU candidate where it keeps a graph INT8
    from quantart_runtime.backends import cpu_candidates

    candidates, _ = cpu_candidates(out, {"cache_dir": False})
    int8_candidates = [c for c in candidates if "INT8" in c.how]
    if any(p != "fp32" for p in result.plan.values()):
        assert [c.options["plan"] for c in int8_candidates] == [result.plan]
    else:
        assert not int8_candidates

    # an INT8 content encoder added behind the export's back is judged here too, and stays FP32
    _needs_nncf()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    manifest = _manifest(copy)
    x = (np.asarray(np.random.default_rng(0).integers(0, 256, (4, 1, 3, 32, 32)), np.float32) / 127.5 - 1)
    model = quantize_graph(ov.Core(), copy / "content_encoder.onnx", [{"image": v} for v in x])
    ov.save_model(model, str(copy / int8_file("content_encoder")), compress_to_fp16=False)
    manifest["int8"]["graphs"]["content_encoder"] = _entry(copy, "content_encoder",
                                                           manifest["graphs"]["fp32"]["content_encoder"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "content_encoder" in int8_graphs(manifest)
    judged = plan_for(copy, "openvino", "int8", cache_dir=False)
    check = next(c for c in judged.checks if c.graph == "content_encoder")
    assert not check.passed and judged.plan["content_encoder"] == "fp32"
    assert judged.plan["decoder"] == manifest["int8"]["graphs"]["decoder"]["precision"]


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


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_bench_int8_row_needs_the_ir(model_dir, int8_export):
    from quantart_benchmarks.runtime_backends import availability

    ok, reason = availability("openvino-int8", _manifest(model_dir))
    assert not ok and "--int8-calibration" in reason
    ok, reason = availability("openvino-int8", _manifest(int8_export[0]))
    assert ok and reason == ""


def test_calibration_split_is_disjoint_and_deterministic(calibration_dir, tmp_path):
    from quantart_export.int8_data import load_images, split_images

    files = sorted(calibration_dir.iterdir())
    shutil.copy(files[0], tmp_path / "same_bytes.jpg")          # a duplicate can never straddle the split
    files = files + [tmp_path / "same_bytes.jpg"]
    a, b = split_images(files), split_images(list(reversed(files)))
    assert a.calibration == b.calibration and a.validation == b.validation       # seeded, order-free
    assert a.record() == b.record() and a.duplicates == 1 and a.unreadable == 1
    digests = lambda fs: {a.digests[p.name] for p in fs}                          # noqa: E731
    assert not digests(a.calibration) & digests(a.validation)                    # disjoint by content
    assert len(a.calibration) + len(a.validation) == 8 and len(a.validation) == 4
    other = split_images(files, seed=1)
    assert other.record()["validation_sha256"] != a.record()["validation_sha256"] or len(files) < 3
    views = load_images(a.calibration, 32, augment=True)
    assert views.shape == (4 * len(a.calibration), 32, 32, 3)
    assert np.array_equal(views, load_images(a.calibration, 32, augment=True))   # seeded crops
    from quantart_export.errors import ExportError

    with pytest.raises(ExportError, match="at least 2 distinct images"):
        split_images([files[0], tmp_path / "same_bytes.jpg"])


@pytest.mark.slow   # NNCF accuracy control ranks every quantizer group (minutes on 2 cores)
def test_graph_forced_to_fail_the_gate_stays_fp32(tmp_path, calibration_dir, data_dir):
    _needs_nncf()
    from quantart_runtime.backends.openvino import OpenVINORunner
    from quantart_runtime.manifest import load_manifest

    out = tmp_path / "out"
    result = _export_in_child([data_dir / "tiny_stage2.ckpt", "--out", out, "--no-verify", "--opt-res", "32",
                               "--verify-res", "32x32", "--int8-calibration", calibration_dir,
                               "--int8-max-fp32-layers", "0"], gate="unreachable-gate")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    section = _manifest(out)["int8"]
    assert section["graphs"] == {} and sorted(section["gate"]["failed"]) == sorted(section["accuracy_control"])
    assert all(not r["passed"] for r in section["accuracy_control"].values())
    assert not list(out.glob("*.int8.*"))
    from quantart_runtime import BackendError

    with pytest.raises(BackendError, match="no INT8 IR"):
        OpenVINORunner(out, load_manifest(out), precision="int8")
