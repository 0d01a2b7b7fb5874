"""Shared fixtures. Tests use only files in the repository (tests/data, assets) — never ../shared.

Each golden test checkpoint is exported once per test session, here, and shared by every module that
needs it (export, runtime, cluster tests). The exports are read-only for the tests: a test that wants
to break or edit a model directory copies it first.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ASSETS = ROOT / "assets"
TEST_VERIFY_RES = [(32, 32), (32, 48)]  # export verification sizes of the tiny models (stride 4)

# One torch/OpenMP thread: the test models are tiny, and on a shared 2-core machine torch's second
# thread spins against the other jobs (measured: the golden tests 2.3 s with 1 thread, 21.9 s with 2).
# ONNX Runtime and OpenVINO size their own thread pools. The full-size export raises it for its module.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Whole modules in the slow lane (`make test` runs them, `make test-fast` does not): each starts a local
# Ray cluster (and Ray Serve, or Chromium) before its first assertion, tens of seconds on 2 cores.
# Single slow tests elsewhere carry @pytest.mark.slow themselves.
SLOW_MODULES = frozenset({"test_cluster_batch.py", "test_cluster_serve.py", "test_web_page.py"})


def pytest_collection_modifyitems(config, items):
    """Mark every test of SLOW_MODULES ``slow``."""
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def quantart_cache(tmp_path_factory):
    """Precision plans and OpenVINO's compiled models (QUANTART_CACHE_DIR) go to the session's tmp, never
    to the user's cache directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QUANTART_CACHE_DIR", str(tmp_path_factory.mktemp("quantart_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data: the golden checkpoints and reference outputs computed with the official code."""
    return DATA


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """assets/: the sample content and style images."""
    return ASSETS


@dataclass
class CliExport:
    """What a ``quantart-export`` run left: the click result (exit code, stdout, stderr) and the output."""

    result: Any
    out: Path


@pytest.fixture(scope="session")
def tiny_stage1_cli_export(tmp_path_factory) -> CliExport:
    """tests/data/tiny_stage1.ckpt (a VQGAN) exported once per session through the ``quantart-export``
    CLI, with --force over an existing directory: FP32 and FP16 graphs, verified at TEST_VERIFY_RES, a
    non-default TensorRT profile (opt 64, max 512, batch 8). test_export_cli checks the command's result,
    test_export_stage1 the graphs."""
    from click.testing import CliRunner

    from quantart_export.cli import main

    out = tmp_path_factory.mktemp("export_stage1") / "tiny_stage1_onnx"
    out.mkdir()
    (out / "keep.txt").write_text("an older directory, replaced as a whole")
    verify_res = ",".join(f"{h}x{w}" for h, w in TEST_VERIFY_RES)
    result = CliRunner().invoke(main, [str(DATA / "tiny_stage1.ckpt"), "--out", str(out), "--force",
                                       "--precision", "both", "--verify-res", verify_res, "--opt-res", "64",
                                       "--max-res", "512", "--max-batch", "8"])
    return CliExport(result, out)


@pytest.fixture(scope="session")
def tiny_stage1_export(tiny_stage1_cli_export) -> Path:
    """The session's Stage 1 model directory (see ``tiny_stage1_cli_export``)."""
    result = tiny_stage1_cli_export.result
    assert result.exit_code == 0, f"quantart-export failed: {result.stderr or result.output}"
    return tiny_stage1_cli_export.out


@pytest.fixture(scope="session")
def tiny_stage2_export(tmp_path_factory) -> Path:
    """tests/data/tiny_stage2.ckpt (a StyleTransfer) exported once per session: FP32 and FP16 graphs,
    the default profile but opt_res 64, verified at TEST_VERIFY_RES. The export tests check it against PyTorch; the
    runtime, cluster and benchmark tests run it (as ``model_dir``)."""
    from quantart_export import export_model

    out = tmp_path_factory.mktemp("export_stage2") / "tiny_stage2_onnx"
    # opt_res 64: the serving-size verification references (the profile's opt_res) stay small; the tiny
    # model attends at stride 2, so 256² would mean 16384-token attention in every verification.
    return export_model(DATA / "tiny_stage2.ckpt", out, precision="both", verify_res=TEST_VERIFY_RES, opt_res=64)


@pytest.fixture(scope="session")
def model_dir(tiny_stage2_export) -> Path:
    """The model directory of the runtime tests: the session's tiny Stage 2 export."""
    return tiny_stage2_export


@pytest.fixture(scope="module")
def stylizer(model_dir):
    """A Stylizer (ONNX Runtime, CPU) on the tiny export, fresh per test module (its call counters and
    style cache start empty)."""
    from quantart_runtime import Stylizer

    st = Stylizer.load(model_dir, backend="onnxruntime")
    yield st
    st.close()
