"""Helpers of the export tests: open an exported graph in ONNX Runtime (CPU), run it on numpy or torch
feeds, read manifest.json. The exports themselves are session fixtures in conftest.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

DATA = Path(__file__).parent / "data"


def session(path: Path) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on the graph file ``path`` (warnings off)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, **feeds) -> list[np.ndarray]:
    """Run ``sess`` on named feeds (numpy arrays or torch tensors); returns every output as numpy."""
    return sess.run(None, {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in feeds.items()})


def manifest(directory: Path) -> dict:
    """manifest.json of the exported model directory ``directory``, parsed."""
    return json.loads((directory / "manifest.json").read_text())


def ratio(v: float) -> np.ndarray:
    """A fusion ratio as the graphs take it: float32 of shape (1,)."""
    return np.array([v], dtype=np.float32)
