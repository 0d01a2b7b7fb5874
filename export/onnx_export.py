"""One graph module → one checked ONNX file, with the torch.onnx dynamo exporter.

Batch, height and width are dynamic (`torch.export.Dim`, one per symbolic name of the graph's
inputs, so the style latent of sga.onnx has its own height and width). The graph's input and output
dimensions carry the symbolic names of docs/model_format.md; the file passes onnx.checker's full
check and strict shape inference, and no dimension of its inputs or outputs is a fixed example size.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from quantart_runtime.util import atomic_open, one_line

from .graphs import GraphSpec

DEFAULT_OPSET = 18  # the dynamo exporter's native (torchlib) opset: no version conversion pass
MIN_OPSET = 18

# Example sizes used while tracing: all distinct (no accidental equal-size specialisation) and > 1.
EXAMPLE_BATCH = 2
EXAMPLE_LATENT = {"latent_height": 5, "latent_width": 7, "style_latent_height": 6, "style_latent_width": 9}
_IMAGE_DIMS = {"height": "latent_height", "width": "latent_width",
               "style_height": "style_latent_height", "style_width": "style_latent_width"}


class GraphExportError(RuntimeError):
    """The exporter failed or produced a graph that does not pass the checks."""


def _dim_size(name: str, stride: int) -> int:
    if name == "batch":
        return EXAMPLE_BATCH
    if name in EXAMPLE_LATENT:
        return EXAMPLE_LATENT[name]
    return EXAMPLE_LATENT[_IMAGE_DIMS[name]] * stride


def _dim(name: str, stride: int) -> Dim:
    if name == "batch":
        return Dim("batch", min=1)
    # torch.export specialises size 1: images from two latent rows and columns up (the ONNX graph
    # itself is generic and runs at one latent row as well).
    return Dim(name, min=2 * stride if name in _IMAGE_DIMS else 2)


def example_inputs(spec: GraphSpec, stride: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs of ``spec``: random tensors in [−1, 1] (ratios 0.75) with the distinct example
    sizes of ``EXAMPLE_BATCH`` / ``EXAMPLE_LATENT`` (image sides × ``stride``); deterministic by ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    args = []
    for t in spec.inputs:
        shape = [s if isinstance(s, int) else _dim_size(s, stride) for s in t.shape]
        if t.name.endswith("ratio"):
            args.append(torch.full(shape, 0.75))
        else:
            args.append(torch.rand(shape, generator=g) * 2 - 1)
    return tuple(args)


def dynamic_shapes(spec: GraphSpec, stride: int) -> dict:
    """torch.export dynamic shapes of ``spec``'s inputs: ``{input name: {axis: Dim}}`` with one shared
    ``Dim`` per symbolic name (``None`` for an input without symbolic axes).
    """
    dims: dict[str, Dim] = {}
    out = {}
    for t in spec.inputs:
        axes = {i: dims.setdefault(s, _dim(s, stride)) for i, s in enumerate(t.shape) if isinstance(s, str)}
        out[t.name] = axes or None
    return out


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs optional-dependency notes (torchvision) and deprecation chatter: hide them."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _name_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give the graph's inputs and outputs the manifest's symbolic dimension names."""
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        by_name = {v.name: v for v in values}
        if set(by_name) != {t.name for t in tensors}:
            raise GraphExportError(f"{spec.name}: exported I/O {sorted(by_name)} != {[t.name for t in tensors]}")
        for t in tensors:
            dims = by_name[t.name].type.tensor_type.shape.dim
            if len(dims) != len(t.shape):
                raise GraphExportError(f"{spec.name}: {t.name} has rank {len(dims)}, expected {len(t.shape)}")
            for dim, want in zip(dims, t.shape):
                if isinstance(want, int):
                    if not dim.HasField("dim_value") or dim.dim_value != want:
                        raise GraphExportError(f"{spec.name}: {t.name} dims {dims} do not match {t.shape}")
                else:
                    if dim.HasField("dim_value"):
                        raise GraphExportError(f"{spec.name}: {t.name} has the fixed size {dim.dim_value} "
                                               f"where {want!r} must be dynamic")
                    dim.dim_param = want


def check_graph(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """onnx.checker full check and strict shape inference; returns the shape-inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise GraphExportError(f"{name}: the exported graph fails the ONNX checks: {one_line(exc)}") from None


def export_graph(spec: GraphSpec, module: torch.nn.Module, path: Path, *, stride: int, opset: int,
                 precision: str) -> onnx.ModelProto:
    """Export `module` (spec's wrapper in the wanted precision) to `path`; returns the written model."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter needs {MIN_OPSET} or newer")
    args = example_inputs(spec, stride)
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(
                module.eval(), args, dynamo=True, input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs], dynamic_shapes=dynamic_shapes(spec, stride),
                opset_version=opset, optimize=True, verbose=False, external_data=False)
        except Exception as exc:  # the exporter raises many types; report them as one line
            raise GraphExportError(f"{spec.name} ({precision}): torch.onnx export failed: {one_line(exc)}") from exc
    model = program.model_proto
    _name_dims(model, spec)
    model.producer_name = "quantart-export"
    onnx.helper.set_model_props(model, {"quantart.graph": spec.name, "quantart.precision": precision})
    check_graph(model, f"{spec.name} ({precision})")
    with atomic_open(path) as f:
        f.write(model.SerializeToString())
    return model
