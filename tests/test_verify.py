"""Precision verification and plans (torch-free verifier, plan cache, backend="auto" selection, CLI)."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

pytest.importorskip("openvino", reason="openvino is not installed (the [cpu] extra)")


def _has_bf16() -> bool:
    from quantart_runtime.backends.openvino import cpu_capabilities

    return "BF16" in cpu_capabilities()


needs_bf16 = pytest.mark.skipif(not _has_bf16(), reason="this CPU reports no BF16 to OpenVINO")


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch):
    """Plans and OpenVINO's compiled models go to a per-test cache directory (XDG_CACHE_HOME)."""
    monkeypatch.delenv("QUANTART_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_reference_data_is_stored_small_and_hashed(model_dir, tmp_path):
    from quantart_runtime import ModelError
    from quantart_runtime.manifest import load_manifest
    from quantart_runtime.util import sha256_file
    from quantart_runtime.verify import load_references

    manifest = load_manifest(model_dir)
    entries = manifest["verification_data"]
    opt = manifest["profile"]["opt_res"]
    # one file per verification resolution of the export, plus the serving size (the profile's opt_res)
    assert len(entries) >= 2 and f"{opt}x{opt}" in [e["resolution"] for e in entries]
    for e in entries:
        assert e["file"] == f"verification/reference_{e['resolution']}.npz"
        assert sha256_file(model_dir / e["file"]) == e["sha256"] and e["bytes"] < 8_000_000
    refs = load_references(model_dir, manifest)
    assert refs[0]["content"].dtype.name == "uint8" and refs[0]["image"].shape == refs[0]["content"].shape
    assert refs[0]["indices"].dtype.name == "int64" and refs[0]["content_indices"].dtype.name == "int64"
    assert refs[0]["content_codebook"].shape == (manifest["n_embed"], manifest["embed_dim"])
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    path = broken / entries[0]["file"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelError, match="does not match its sha256"):
        load_references(broken, manifest)


def test_fp32_passes_its_own_gate(model_dir):
    from quantart_runtime.verify import verify_model

    result = verify_model(model_dir, "onnxruntime", "fp32")
    assert all(c.passed for c in result.checks) and set(result.plan.values()) == {"fp32"}
    chain = {c.metric: c.value for c in result.checks if c.graph == "chain"}
    assert chain["token agreement"] == 1.0 and chain["image PSNR dB"] >= 45


@needs_bf16
def test_bf16_plan_keeps_failing_graphs_fp32_and_is_cached(model_dir, user_cache):
    from quantart_runtime.verify import plan_cache_path, plan_for

    first = plan_for(model_dir, "openvino", "bf16")
    plain = {c.graph: c for c in first.checks if c.precision == "bf16"}
    # encoders failing plain BF16 are judged again with their last stage FP32 (bf16-tail)
    retried = {c.graph: c for c in first.checks if c.precision == "bf16-tail"}
    assert set(retried) == {g for g in ("content_encoder", "style_encoder") if not plain[g].passed}
    for graph, check in retried.items():
        assert first.plan[graph] == ("bf16-tail" if check.passed else "fp32"), graph
    checks = {c.graph: c for c in first.checks if c.graph != "chain"}
    # every graph judged; the plan follows the judgement graph by graph
    assert set(checks) == {"content_encoder", "style_encoder", "sga", "decoder"}
    for graph, check in checks.items():
        if not check.passed:
            assert first.plan[graph] == "fp32", graph
    # the tiny model: the BF16 decoder stays far above 30 dB, the near-tied encoder tokens flip
    assert checks["decoder"].passed and first.plan["decoder"] == "bf16"
    assert not checks["content_encoder"].passed and first.plan["content_encoder"] == "fp32"
    chain = [c for c in first.checks if c.graph == "chain"]
    assert chain and all(c.passed for c in chain[-2:])
    assert not first.cached
    path = plan_cache_path(first.model_sha256, "openvino", "bf16")
    assert path.is_file() and str(path).startswith(str(user_cache))
    second = plan_for(model_dir, "openvino", "bf16")
    assert second.cached and second.plan == first.plan
    path.write_text("{not json")
    assert not plan_for(model_dir, "openvino", "bf16").cached   # a corrupt cache is re-verified


def test_auto_selection_and_reasons(model_dir, tmp_path):
    from quantart_runtime import Stylizer
    from quantart_runtime.backends import available_backends, choose_backend

    if available_backends()["tensorrt"] == "":
        pytest.skip("TensorRT is available here: auto picks it first")
    no_bf16 = choose_backend(model_dir, capabilities=["FP32"])
    assert no_bf16.backend == "onnxruntime" and no_bf16.precision == "fp32"
    assert "reports no BF16" in no_bf16.reason and "tensorrt:" in no_bf16.reason
    assert "capabilities" not in no_bf16.options

    old = tmp_path / "old_export"          # exported before verification data existed
    shutil.copytree(model_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("verification_data")
    (old / "manifest.json").write_text(json.dumps(manifest))
    if _has_bf16():
        fallback = choose_backend(old)
        assert fallback.backend == "onnxruntime" and "no verification data" in fallback.reason

    assert choose_backend(model_dir, precision="fp32").backend == "onnxruntime"
    forced = choose_backend(model_dir, precision="bf16")
    assert forced.backend == "openvino" and set(forced.options["plan"].values()) == {"bf16"}
    if not _has_bf16():
        return
    choice = choose_backend(model_dir)       # measured: the faster of ORT FP32 and the verified plan
    timed = choice.timings
    assert [c.backend for c in timed] in (["onnxruntime", "openvino"], ["openvino", "onnxruntime"])
    assert timed[0].seconds <= timed[1].seconds and choice.backend == timed[0].backend
    plan = next(c for c in timed if c.backend == "openvino")
    assert plan.precision.startswith("decoder bf16") and choice.precision == timed[0].precision
    assert "fastest verified CPU candidate (measured now" in choice.reason
    assert choice.timed_size and f"at {choice.timed_size}" in choice.reason   # the size the timings are at
    assert all(c.timing() in choice.reason for c in timed)     # both timings are said
    with Stylizer.load(model_dir) as st:
        assert st.backend == choice.backend and st.precision == choice.precision
        assert "cached measurement" in st.reason   # measured once, on first use above
        assert all(f"{c.backend} {c.precision} " in st.reason for c in timed)


def test_verify_cli(model_dir, tmp_path):
    from quantart.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(model_dir), "--backend", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "plan: content_encoder fp32" in result.output and "chain" in result.output
    result = runner.invoke(main, ["verify", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such directory" in result.output


def test_stylize_verbose_says_what_runs(model_dir, tmp_path):
    import numpy as np
    from PIL import Image

    from quantart.cli import main

    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(tmp_path / "c.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "s.png")
    result = CliRunner().invoke(main, ["stylize", "--model", str(model_dir), "--style", str(tmp_path / "s.png"),
                                       str(tmp_path / "c.png"), "-o", str(tmp_path / "out"), "--verbose",
                                       "--no-progress", "--backend", "cpu"])
    assert result.exit_code == 0, result.output
    assert "backend: onnxruntime, precision: fp32 (backend onnxruntime asked for)" in result.output


def test_verification_stays_within_the_memory_budget(model_dir):
    """The stored references obey the same memory policy as requests: sizes over the budget are left
    out (and said), and a budget that holds none of them is a one-line error."""
    from quantart_runtime import ModelError
    from quantart_runtime.manifest import load_manifest
    from quantart_runtime.memory import Geometry, SizePolicy
    from quantart_runtime.verify import load_references, references_within_budget, verify_model

    manifest = load_manifest(model_dir, precision="fp32")
    refs = load_references(model_dir, manifest)
    shapes = [r["content"].shape[:3] for r in refs]
    n, h, w = max(shapes, key=lambda s: s[1] * s[2])
    assert min(s[1] * s[2] for s in shapes) < h * w  # at least two sizes are stored

    def fits(budget, shape):
        return SizePolicy(Geometry.from_manifest(manifest), budget).fits(shape[1], shape[2], batch=shape[0])

    lo, hi = 1 << 20, 1 << 40  # bisect: the largest budget at which the largest reference does not fit
    assert not fits(lo, (n, h, w)) and fits(hi, (n, h, w))
    while hi - lo > 1 << 10:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if not fits(mid, (n, h, w)) else (lo, mid)
    kept, skipped = references_within_budget(refs, manifest, lo)
    assert skipped == [f"{h}x{w}" for s in shapes if s[1:] == (h, w)]
    assert len(kept) == len(refs) - len(skipped) and all(fits(lo, r["content"].shape[:3]) for r in kept)
    result = verify_model(model_dir, "onnxruntime", "fp32", memory_budget=lo)
    assert all(c.passed for c in result.checks) and f"left out the references at {h}x{w}" in result.reason
    smallest = min(shapes, key=lambda s: s[1] * s[2])
    assert not fits(1 << 20, smallest)  # 1 MiB, the smallest budget there is, holds none of them
    with pytest.raises(ModelError, match="more memory than the budget") as info:
        verify_model(model_dir, "onnxruntime", "fp32", memory_budget=1 << 20)
    assert "\n" not in str(info.value)
