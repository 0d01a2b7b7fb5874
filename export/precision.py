"""The FP16 mixed-precision graph, emitted straight from torch (no post-hoc ONNX conversion).

Convolutions and matmuls run in FP16; GroupNorm statistics (and its affine), softmax (AttnBlock
already upcasts) and every nearest-codebook step (distance, ArgMin, Gather, fusion) stay FP32.
Graph inputs and outputs stay FP32 / INT64: the wrappers in graphs.py cast at the boundary. Every
dtype change is an explicit Cast node, so a strongly typed TensorRT network builds from the graph
as it is, without a precision flag.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

PRECISIONS = ("fp32", "fp16")


class FP32GroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics and affine are computed in FP32 whatever the input dtype."""

    @classmethod
    def from_module(cls, gn: nn.GroupNorm) -> "FP32GroupNorm":
        """A copy of ``gn`` (same groups, eps, affine parameters as FP32 tensors, frozen)."""
        new = cls(gn.num_groups, gn.num_channels, eps=gn.eps, affine=gn.affine)
        if gn.affine:
            new.weight = nn.Parameter(gn.weight.detach().float().clone(), requires_grad=False)
            new.bias = nn.Parameter(gn.bias.detach().float().clone(), requires_grad=False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GroupNorm of ``x`` computed in FP32; the result has ``x``'s dtype."""
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _replace_group_norms(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.GroupNorm) and not isinstance(child, FP32GroupNorm):
            setattr(module, name, FP32GroupNorm.from_module(child))
        else:
            _replace_group_norms(child)


def to_precision(graph: nn.Module, precision: str) -> nn.Module:
    """The graph module to export for `precision`; fp16 gives a converted deep copy (the model is untouched)."""
    if precision == "fp32":
        return graph
    if precision != "fp16":
        raise ValueError(f"unknown precision {precision!r} (expected one of {PRECISIONS})")
    mixed = copy.deepcopy(graph)
    _replace_group_norms(mixed)
    mixed.half()
    for module in mixed.modules():  # GroupNorm affine and codebooks back to FP32
        if isinstance(module, FP32GroupNorm):
            module.float()
    for name in getattr(mixed, "codebook_names", ()):
        setattr(mixed, name, getattr(graph, name).detach().float().clone())
    return mixed.eval()
