"""Shared fixtures. Tests use only files in the repository (tests/data, assets) — never ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
ASSETS = ROOT / "assets"

# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return ASSETS


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """tests/data/tiny_stage2.ckpt exported once per session (FP32; verified at small sizes, since the
    runtime, cluster and benchmark tests compare with PyTorch themselves)."""
    from quantart_export import export_model

    out = tmp_path_factory.getbasetemp() / "tiny_stage2_model"
    return export_model(DATA / "tiny_stage2.ckpt", out, precision="fp32", verify=True, force=True,
                        verify_res=[(32, 32), (24, 40)])


@pytest.fixture(scope="module")
def stylizer(model_dir):
    """A Stylizer (ONNX Runtime, CPU) on the tiny export, fresh per test module (its call counters and
    style cache start empty)."""
    from quantart_runtime import Stylizer

    st = Stylizer.load(model_dir, backend="onnxruntime")
    yield st
    st.close()
