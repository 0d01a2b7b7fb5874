"""manifest.json of an exported model directory (docs/model_format.md)."""
from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_SUFFIX = {"fp32": ".onnx", "fp16": ".fp16.onnx"}
DEFAULT_PROFILE = {"opt_res": 256, "max_res": 1024, "max_batch": 32}  # min_res defaults to the latent stride


def graph_file(name: str, precision: str) -> str:
    return name + GRAPH_SUFFIX[precision]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_digest(path: Path) -> str:
    """sha256 of a checkpoint file; for a saved model directory, of its model.safetensors."""
    from quantart.checkpoint import WEIGHTS_NAME

    return sha256_file(path / WEIGHTS_NAME if path.is_dir() else path)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict:
    return {name: _version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime", "quantart")}


def graph_entry(spec, precision: str, path: Path) -> dict:
    return {"file": path.name, "sha256": sha256_file(path), "precision": precision,
            "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs]}


def build_manifest(model, graphs: dict, *, opset: int, profile: dict, checkpoint: Path, options: dict,
                   verification: dict | None) -> dict:
    """graphs: {precision: {graph name: entry}} (entries from `graph_entry`)."""
    cfg = model.config
    stride = int(model.stride)
    return {
        "format_version": FORMAT_VERSION,
        "kind": cfg["kind"],
        "latent_stride": stride,
        "embed_dim": int(cfg["embed_dim"]),
        "n_embed": int(cfg["n_embed"]),
        "resolution_rule": {"multiple_of": stride, "min": stride},
        "opset": opset,
        "graphs": graphs,
        "profile": dict(profile),
        "exporter": "torch.onnx (dynamo=True)",
        "versions": library_versions(),
        "source": {"checkpoint": checkpoint.name, "sha256": checkpoint_digest(checkpoint)},
        "architecture": cfg,
        "options": options,
        "verification": verification,
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    path = directory / MANIFEST_NAME
    tmp = directory / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)
    return path
