"""`quantart bench` end to end on a micro Stage 2 model: the report is complete and well formed.

No timing assertions: only that every field is there, the plots are valid PNGs, unavailable
backends are listed as skipped with a reason, and the fidelity of ONNX Runtime against torch FP32
is what an FP32 export gives. The end-to-end run (an export of the micro model and one worker
process per backend) is marked ``slow``; the bad-input cases run on the session's tiny export.
"""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from quantart.checkpoint import save_model  # noqa: E402
from quantart.models import build_model  # noqa: E402
from quantart_benchmarks import fidelity  # noqa: E402
from quantart_benchmarks.cli import bench  # noqa: E402
from quantart_benchmarks.flops import graph_flops, parse_flops  # noqa: E402
from quantart_benchmarks.report import BACKEND_ORDER  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MICRO = {"kind": "stage2", "n_embed": 64, "embed_dim": 32,
         "ddconfig": dict(double_z=False, z_channels=32, resolution=32, in_channels=3, out_ch=3, ch=32,
                          ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
         "sga": dict(block_num=1, residual=False, use_conv=True, use_selfatt=True)}


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    """The micro model (no attention in the autoencoder, so the 256² style images stay cheap) saved and
    exported (FP32, not verified: the report's fidelity section compares it with PyTorch)."""
    from quantart_export import export_model

    root = tmp_path_factory.mktemp("bench_model")
    torch.manual_seed(0)
    ckpt = save_model(build_model(MICRO).eval(), root / "micro")
    model_dir = export_model(ckpt, root / "micro_onnx", precision="fp32", verify=False)
    return ckpt, model_dir


@pytest.fixture(scope="module")
def report(micro_model, tmp_path_factory):
    ckpt, model_dir = micro_model
    out = tmp_path_factory.mktemp("bench_out")
    mp = pytest.MonkeyPatch()   # the workers' plan and OpenVINO caches go to tmp, not the user's cache
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    result = CliRunner().invoke(bench, [
        "--model", str(model_dir), "--checkpoint", str(ckpt), "--resolutions", "32", "--batch-sizes", "1,2",
        "--warmup", "1", "--iters", "2", "--out", str(out)])
    mp.undo()
    assert result.exit_code == 0, result.output
    return json.loads((out / "bench.json").read_text()), out, result.output


@pytest.mark.slow
def test_every_backend_is_measured_or_skipped_with_a_reason(report):
    rep, _, _ = report
    assert list(rep["backends"]) == list(BACKEND_ORDER)
    for name, entry in rep["backends"].items():
        assert entry["status"] in ("ok", "skipped", "failed"), name
        if entry["status"] == "skipped":
            assert isinstance(entry["reason"], str) and entry["reason"].strip(), name
    assert rep["backends"]["torch-fp32"]["status"] == "ok", rep["backends"]["torch-fp32"]
    assert rep["backends"]["ort-cpu"]["status"] == "ok", rep["backends"]["ort-cpu"]
    if not torch.cuda.is_available():
        for name in ("torch-fp16", "torch-compile", "ort-cuda", "ort-trt", "tensorrt-fp16"):
            assert rep["backends"][name]["status"] == "skipped", name


@pytest.mark.slow
def test_runs_cover_every_configuration_with_all_fields(report):
    rep, _, _ = report
    for name in ("torch-fp32", "ort-cpu"):
        entry = rep["backends"][name]
        assert entry["build_s"] > 0 and entry["peak_rss_mb"] > 0 and entry["info"]["device"] == "cpu"
        keys = {(r["resolution"], r["batch"], r["style_cache"]) for r in entry["runs"]}
        assert keys == {(32, b, m) for b in (1, 2) for m in ("off", "on")}
        for run in entry["runs"]:
            e = run["e2e"]
            assert e["iters"] == 2 and 0 < e["min_ms"] <= e["p50_ms"] <= e["p90_ms"]
            assert e["images_per_s"] > 0 and run["first_call_s"] > 0
            assert run["peak_rss_mb"] >= entry["baseline_rss_mb"] * 0.5
            assert "device_peak_mb" in run and "rss_delta_mb" in run
        assert {(g["resolution"], g["batch"]) for g in entry["graphs"]} == {(32, 1), (32, 2)}
        for g in entry["graphs"]:
            assert set(g["graphs"]) == {"content_encoder", "style_encoder", "sga", "decoder", "pre_post"}
        assert len(entry["roofline_graphs"]) == 2 and len(entry["roofline_e2e"]) == 4
        assert set(entry["overhead"]) == {f"32/{b}/{m}" for b in (1, 2) for m in ("off", "on")}
    # the cached path never runs the style encoder in the timed loop: fewer style encoder calls
    counts = rep["backends"]["ort-cpu"]["graph_call_counts"]
    assert counts["content_encoder"] > counts["style_encoder"]


@pytest.mark.slow
def test_fidelity_of_the_fp32_export_against_torch(report):
    rep, _, _ = report
    ref = rep["backends"]["torch-fp32"]["fidelity_vs_torch_fp32"]
    assert ref["psnr_db"] == fidelity.PSNR_CAP_DB and ref["token_agreement_pct"] == 100.0
    ort = rep["backends"]["ort-cpu"]["fidelity_vs_torch_fp32"]
    assert ort["pairs"] == 4
    assert ort["psnr_db"] >= 40.0 and ort["token_agreement_pct"] >= 95.0


@pytest.mark.slow
def test_flops_peaks_targets_and_environment(report):
    rep, _, _ = report
    flops = rep["flops"]["32"]
    assert set(flops) == {"content_encoder", "style_encoder", "sga", "decoder"}
    assert all(v > 0 for v in flops.values())
    assert rep["peaks"]["cpu_fp32"]["flops_per_s"] > 0
    assert len(rep["targets"]) == 17   # 7 + the CPU BF16 (OpenVINO) targets + INT8, 512² b1 and 256² b8 rows
    for t in rep["targets"]:
        assert t["status"] in ("pass", "miss", "n/a", "reported")
        assert (t["value"] is None) == (t["status"] == "n/a")
        if t["status"] == "n/a":
            assert t["note"]
    # the CPU targets are defined at 256², not measured in this 32² run; the GPU ones need a GPU
    assert all(t["status"] == "n/a" for t in rep["targets"])
    assert rep["hardware"]["cpu"] and rep["hardware"]["logical_cpus"] >= 1
    assert rep["software"]["versions"]["torch"] and rep["software"]["versions"]["onnxruntime"]
    assert len(rep["load_average"]["start"]) == 3
    json.dumps(rep, allow_nan=False)  # strictly valid JSON: no NaN / inf anywhere


@pytest.mark.slow
def test_markdown_and_plots_written(report):
    rep, out, stdout = report
    md = (out / "bench.md").read_text()
    for needle in ("## Targets", "## Results", "## Latency breakdown", "## FLOPs per graph", "| ort-cpu | ✅",
                   "| torch-fp16 | ❎ skipped" if not torch.cuda.is_available() else "| torch-fp16 |"):
        assert needle in md, needle
    assert "## Results" in stdout
    for name in rep["files"]["plots"].values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temp files


def test_roofline_reference_numbers_of_the_official_architecture():
    from quantart.models.config import official_config

    f = graph_flops(official_config("stage2"), 256)
    assert math.isclose(f["content_encoder"] / 1e9, 138, rel_tol=0.02)
    assert math.isclose(f["sga"] / 1e9, 6, rel_tol=0.1)
    assert math.isclose(f["decoder"] / 1e9, 253, rel_tol=0.02)
    assert parse_flops("800G") == 8e11 and parse_flops("2.5e12") == 2.5e12


def test_psnr_and_token_agreement(tmp_path):
    import numpy as np

    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255
    np.savez(tmp_path / "a.npz", images=a, tokens=np.array([1, 2, 3, 4]))
    np.savez(tmp_path / "b.npz", images=b, tokens=np.array([1, 2, 0, 4]))
    assert fidelity.compare(tmp_path / "a.npz", tmp_path / "a.npz")["psnr_db"] == fidelity.PSNR_CAP_DB
    # one pixel channel off by 255 in 96 values: MSE = 255² / 96 (uint8 convention, peak 255)
    got = fidelity.compare(tmp_path / "a.npz", tmp_path / "b.npz")
    assert math.isclose(got["psnr_db"], 10 * math.log10(255**2 / (255**2 / 96)))
    assert got["token_agreement_pct"] == 75.0 and got["pairs"] == 2
    assert fidelity.token_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 75.0


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "no such directory"),
    (["--backends", "ort-cpu,nope"], "unknown backend"),
    (["--resolutions", "256,x"], "--resolutions"),
    (["--peak-flops", "-3"], "--peak-flops"),
])
def test_bad_input_is_one_line_and_exit_code_2(model_dir, tmp_path, args, message):
    argv = (["--model", str(model_dir)] if args[0] != "--model" else []) + args + ["--out", str(tmp_path / "o")]
    result = CliRunner().invoke(bench, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "bench.json").exists()
