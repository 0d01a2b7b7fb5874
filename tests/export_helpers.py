"""Shared helpers of the export tests: run exported graphs with ONNX Runtime next to PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

DATA = Path(__file__).parent / "data"
TEST_VERIFY_RES = [(32, 32), (32, 48)]


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, **feeds) -> list[np.ndarray]:
    return sess.run(None, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def ratio(v: float) -> np.ndarray:
    return np.array([v], dtype=np.float32)
