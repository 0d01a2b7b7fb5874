"""benchmarks/device_check.{sh,py}: the parts that run without a GPU.

Argument parsing (options before or after OUT_DIR, a relative OUT_DIR resolved from the caller's
directory), the setup step on a machine without Pillow (in a subprocess where importing PIL fails),
the report written after each section, the time budget and the kernel-target verdict. The GPU
sections themselves run only on a lent GPU (docs/device_check.md says what they must show).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("device_check_under_test", ROOT / "benchmarks" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dc = _load()


def test_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUT", raising=False)
    a = dc.parse_args(["--skip", "timing,pipeline", "rel", "--ns", "1,5"])
    assert a.out == tmp_path / "rel" and a.skip == {"timing", "pipeline"} and a.ns == [1, 5]
    assert dc.parse_args(["--out", "x"]).out == tmp_path / "x"
    assert dc.parse_args(["rel", "--out", str(tmp_path / "rel")]).out == tmp_path / "rel"   # the .sh adds --out
    monkeypatch.setenv("OUT", "from_env")
    assert dc.parse_args([]).out == tmp_path / "from_env"
    for bad in (["a", "--out", "b"], ["x", "--ns", "1,zero"], ["x", "--ks", "0"], ["x", "--skip", "warp"]):
        with pytest.raises(SystemExit) as exc:
            dc.parse_args(bad)
        assert exc.value.code == 2
    monkeypatch.delenv("OUT")
    with pytest.raises(SystemExit):
        dc.parse_args([])


CHILD = """
import builtins, json, sys
sys.modules["PIL"] = None                      # importing Pillow now raises ImportError
sys.path.insert(0, sys.argv[2])
import device_check as dc
code = dc.main(["--out", sys.argv[1]])
nc = dc.load_kernel()
idx, _ = nc.nearest_code_reference([[0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
print(json.dumps({"code": code, "package": "quantart_runtime" in sys.modules, "idx": idx.tolist()}))
"""


def test_setup_writes_a_report_without_pillow_or_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""              # no GPU even where one exists
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "out"), str(ROOT / "benchmarks")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child == {"code": 2, "package": False, "idx": [1]}
    res = json.loads((tmp_path / "out" / "device_check.json").read_text())
    assert res["errors"]["setup"] == "no CUDA device visible to torch"
    assert res["versions"]["torch"] and res["versions"]["numpy"]
    md = (tmp_path / "out" / "device_check.md").read_text()
    assert md.startswith("# Device check") and "no CUDA device visible to torch" in md


def test_sections_budget_errors_and_report(tmp_path):
    args = Namespace(out=tmp_path, skip={"pipeline"}, budget_s=10.0)
    res = {"errors": {}, "skipped": {}, "section_s": {}}
    now = [0.0]
    written = []

    def timing():
        res["timing"] = [{"dtype": "fp16", "N": n, "K": 1024, "D": 256, "fused_ms": 1.0, "torch_ms": s,
                          "speedup": s, "indices_equal_torch": True} for n, s in ((1024, 0.5), (8192, 2.5),
                                                                                  (65536, 3.0))]
        now[0] += 5.0

    def broken():
        now[0] += 6.0
        raise RuntimeError("CUDA driver error 700\nsecond line")

    sections = {"timing": timing, "aot": broken, "memory": lambda: None, "pipeline": lambda: None}
    dc.run_sections(args, res, sections, lambda r: (written.append(sorted(r)), dc.write_report(tmp_path, r)),
                    clock=lambda: now[0])
    assert res["errors"] == {"aot": "RuntimeError: CUDA driver error 700"}
    assert (tmp_path / "aot.traceback.txt").read_text().count("RuntimeError") >= 1
    assert res["skipped"] == {"pipeline": "--skip", "memory": "time budget of 10 s used up"}
    assert res["target"] == {"fp16": {"met": True, "min_speedup": 2.5, "cases": 2, "kernel_target": "fused"}}
    assert len(written) == 3                                   # after timing, after aot, at the budget stop
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert saved["target"]["fp16"]["met"] is True
    md = (tmp_path / "device_check.md").read_text()
    assert "## Timing" in md and "| fp16 | 65536 | 1024 | 256 |" in md and "aot: RuntimeError" in md
    res["timing"][2]["speedup"] = 1.9
    assert dc.target_verdict(res)["fp16"] == {"met": False, "min_speedup": 1.9, "cases": 2, "kernel_target": "torch"}


def test_shell_wrapper_takes_options_first_and_a_relative_out_dir(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--skip", "pipeline", "rel"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]      # no GPU: exit 2, with a report
    out = tmp_path / "rel"
    assert json.loads((out / "device_check.json").read_text())["errors"]["setup"]
    assert (out / "device_check.log").exists() and not (out / "triton_cache").exists()
    bad = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--skip", "nope", "x"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "unknown section" in bad.stderr and not (tmp_path / "x").exists()


def test_runner_section_parts_without_a_gpu(tmp_path):
    """The ``runner`` section's pieces that need no GPU: the TensorRT runner module loads from the
    tree without the package __init__ (no Pillow), and the prefetch pattern it drives passes on a
    runner with host memory standing for device memory (tests/test_trt_runner_cpu.py)."""
    code = f"""
import sys
sys.modules["PIL"] = None
sys.path.insert(0, {str(ROOT / "benchmarks")!r}); sys.path.insert(0, {str(ROOT / "tests")!r})
import device_check as dc
trt = dc.load_runtime_module("backends.tensorrt")
assert "quantart_runtime.stylizer" not in sys.modules and "tensorrt" not in sys.modules
sec = dc.load_module("sections", "benchmarks/device_check_sections.py")
from test_trt_runner_cpu import host_mem
r = trt.TensorRTRunner("none", {{"graphs": {{"fp32": {{}}}}}}, device=1)
r.mem = host_mem([])
r.start_memory(); r.active = True
print(sec._prefetch_run(r, 6, shape=(2, 3, 4, 4)))
r.deactivate()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True"
