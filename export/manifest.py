"""manifest.json of an exported model directory (docs/model_format.md)."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from quantart_runtime.util import sha256_file, write_json

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_SUFFIX = {"fp32": ".onnx", "fp16": ".fp16.onnx"}
DEFAULT_PROFILE = {"opt_res": 256, "max_res": 1024, "max_batch": 32}  # min_res defaults to the latent stride


def graph_file(name: str, precision: str) -> str:
    """The file name of graph ``name`` in ``precision`` (``sga.onnx``, ``sga.fp16.onnx``)."""
    return name + GRAPH_SUFFIX[precision]


FUSED_SUFFIX = ".ort.onnx"   # ONNX Runtime variant of a graph, attention fused: decoder.ort.onnx, decoder.fp16.ort.onnx


def fused_file(graph_file_name: str) -> str:
    """The file name of the fused-attention ONNX Runtime variant of a graph file (``sga.fp16.onnx`` ->
    ``sga.fp16.ort.onnx``)."""
    return graph_file_name.removesuffix(".onnx") + FUSED_SUFFIX


def fused_entry(path: Path, attention: int) -> dict:
    """The ``ort_fused`` field of a graph's manifest entry: its fused-attention variant's file, sha256, op
    and how many attentions it fused (``quantart_export.attention_fusion``)."""
    from .attention_fusion import MS_DOMAIN, OP_TYPE

    return {"file": path.name, "sha256": sha256_file(path), "op": f"{MS_DOMAIN}.{OP_TYPE}",
            "attention": int(attention), "for": "onnxruntime"}


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
    """Installed versions of torch, onnx, onnxscript, onnxruntime and quantart (``None`` if absent)."""
    return {name: _version(name) for name in ("torch", "onnx", "onnxscript", "onnxruntime", "quantart")}


def graph_entry(spec, precision: str, path: Path) -> dict:
    """The manifest entry of one written graph file: file name, sha256, precision, inputs and outputs."""
    return {"file": path.name, "sha256": sha256_file(path), "precision": precision,
            "inputs": [t.as_dict() for t in spec.inputs], "outputs": [t.as_dict() for t in spec.outputs]}


def _geometry(cfg: dict, stride: int) -> dict | None:
    """The ``geometry`` field (``quantart_runtime.memory.Geometry``): per resolution level its stride,
    channels and whether it attends, and the SGA blocks; ``None`` for a config it cannot read."""
    from quantart_runtime.memory import Geometry

    try:
        return Geometry.from_config(cfg, stride).as_dict()
    except (KeyError, TypeError, ValueError):
        return None


def build_manifest(model, graphs: dict, *, opset: int, profile: dict, checkpoint: Path, options: dict,
                   verification: dict | None,
                   verification_data: list | None = None) -> dict:
    """graphs: {precision: {graph name: entry}} (entries from `graph_entry`)."""
    cfg = model.config
    stride = int(model.stride)
    return {
        "format_version": FORMAT_VERSION,
        "kind": cfg["kind"],
        "latent_stride": stride,
        "embed_dim": int(cfg["embed_dim"]),
        "n_embed": int(cfg["n_embed"]),
        "geometry": _geometry(cfg, stride),   # levels, channels, attention: the runtime's memory bound
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
        "verification_data": verification_data,
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Write ``manifest`` as ``directory/manifest.json`` atomically; returns its path. Raises ``OSError``."""
    return write_json(directory / MANIFEST_NAME, manifest)
