"""The torch modules exported as ONNX graphs, one per graph of the model directory.

Each wrapper takes and returns exactly the tensors of docs/model_format.md (FP32 / INT64 at the
boundary). Every nearest-codebook step goes through `quantart_export.nearest.nearest_code`,
always with an FP32 codebook held by the wrapper (kept FP32 when the wrapper is cast to FP16).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nearest import nearest_code


def _boundary_in(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An FP32 graph input in the graph's compute dtype (a Cast only in FP16 graphs)."""
    return x if x.dtype == dtype else x.to(dtype)


class _Graph(nn.Module):
    """Common part: the compute dtype is that of the convolutions (FP16 in the mixed graph)."""

    codebook_names: tuple[str, ...] = ()

    @property
    def compute_dtype(self) -> torch.dtype:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                return module.weight.dtype
        return torch.float32


class ContentEncoderGraph(_Graph):
    """image (B,3,H,W) → content_latent (B,D,h,w): encoder + quant_conv, continuous."""

    def __init__(self, model):
        super().__init__()
        self.encoder, self.quant_conv = model.encoder, model.quant_conv

    def forward(self, image):
        """image (B, 3, H, W) float32 in [−1, 1] -> content_latent (B, D, H/stride, W/stride) float32."""
        h = self.quant_conv(self.encoder(_boundary_in(image, self.compute_dtype)))
        return h.float()


class StyleEncoderGraph(_Graph):
    """image (B,3,Hs,Ws) → style_latent (B,D,hs,ws) quantized with quantize_dec's codebook, style_indices."""

    codebook_names = ("codebook",)

    def __init__(self, model):
        super().__init__()
        self.encoder, self.quant_conv = model.encoder_real, model.quant_conv_real
        self.register_buffer("codebook", model.quantize_dec.embedding.weight.detach().float().clone())

    def forward(self, image):
        """image (B, 3, Hs, Ws) float32 in [−1, 1] -> (style_latent (B, D, hs, ws) float32, style_indices
        (B, hs, ws) int64).
        """
        h = self.quant_conv(self.encoder(_boundary_in(image, self.compute_dtype)))
        return nearest_code(h.float(), self.codebook)


class SGAGraph(_Graph):
    """content_latent, style_latent, content_ratio (1,), output_ratio (1,) → stylized_latent, indices.

    Content quantized with quantize_enc's codebook and fused by content_ratio, SGAModule, the output
    quantized with quantize_dec's codebook and fused by output_ratio (StyleTransfer.stylize_latent).
    """

    codebook_names = ("codebook_enc", "codebook_dec")

    def __init__(self, model):
        super().__init__()
        self.sga = model.model_x2y
        self.register_buffer("codebook_enc", model.quantize_enc.embedding.weight.detach().float().clone())
        self.register_buffer("codebook_dec", model.quantize_dec.embedding.weight.detach().float().clone())

    def forward(self, content_latent, style_latent, content_ratio, output_ratio):
        """(content_latent, style_latent, content_ratio (1,), output_ratio (1,)) -> (stylized_latent
        (B, D, h, w) float32, indices (B, h, w) int64); see the class docstring for the fusion.
        """
        dtype = self.compute_dtype
        quant_x, _ = nearest_code(content_latent, self.codebook_enc, content_ratio)
        h_y = self.sga(_boundary_in(quant_x, dtype), _boundary_in(style_latent, dtype))
        return nearest_code(h_y.float(), self.codebook_dec, output_ratio)


class DecoderGraph(_Graph):
    """latent (B,D,h,w) → image (B,3,H,W): post_quant_conv + decoder, not clamped."""

    def __init__(self, model):
        super().__init__()
        self.post_quant_conv, self.decoder = model.post_quant_conv, model.decoder

    def forward(self, latent):
        """latent (B, D, h, w) float32 -> image (B, 3, h·stride, w·stride) float32 (not clamped)."""
        return self.decoder(self.post_quant_conv(_boundary_in(latent, self.compute_dtype))).float()


class Stage1EncoderGraph(_Graph):
    """image → latent (B,D,h,w) quantized with the Stage 1 codebook, indices (B,h,w)."""

    codebook_names = ("codebook",)

    def __init__(self, model):
        super().__init__()
        self.encoder, self.quant_conv = model.encoder, model.quant_conv
        self.register_buffer("codebook", model.quantize.embedding.weight.detach().float().clone())

    def forward(self, image):
        """image (B, 3, H, W) float32 in [−1, 1] -> (latent (B, D, h, w) float32, indices (B, h, w) int64)."""
        h = self.quant_conv(self.encoder(_boundary_in(image, self.compute_dtype)))
        return nearest_code(h.float(), self.codebook)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and symbolic shape ("batch", "height", ..., or ints)."""

    name: str
    dtype: str
    shape: tuple

    def as_dict(self) -> dict:
        """The manifest.json form: ``{"name", "dtype", "shape"}`` (shape as a list)."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """A graph of the model directory: its wrapper, its I/O and how to make example inputs."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


IMAGE = ("batch", 3, "height", "width")
STYLE_IMAGE = ("batch", 3, "style_height", "style_width")


def _latent(d: int, prefix: str = "") -> tuple:
    return ("batch", d, f"{prefix}latent_height", f"{prefix}latent_width")


def graph_specs(model) -> list[GraphSpec]:
    """The graphs of a Stage 1 (BaseVQGAN) or Stage 2 (StyleTransfer) model, in export order."""
    d = int(model.config["embed_dim"])
    kind = model.config["kind"]
    tokens = ("batch", "latent_height", "latent_width")
    if kind == "stage2":
        return [
            GraphSpec("content_encoder", ContentEncoderGraph(model),
                      (TensorSpec("image", "float32", IMAGE),),
                      (TensorSpec("content_latent", "float32", _latent(d)),)),
            GraphSpec("style_encoder", StyleEncoderGraph(model),
                      (TensorSpec("image", "float32", STYLE_IMAGE),),
                      (TensorSpec("style_latent", "float32", _latent(d, "style_")),
                       TensorSpec("style_indices", "int64", ("batch", "style_latent_height", "style_latent_width")))),
            GraphSpec("sga", SGAGraph(model),
                      (TensorSpec("content_latent", "float32", _latent(d)),
                       TensorSpec("style_latent", "float32", _latent(d, "style_")),
                       TensorSpec("content_ratio", "float32", (1,)),
                       TensorSpec("output_ratio", "float32", (1,))),
                      (TensorSpec("stylized_latent", "float32", _latent(d)),
                       TensorSpec("indices", "int64", tokens))),
            GraphSpec("decoder", DecoderGraph(model),
                      (TensorSpec("latent", "float32", _latent(d)),),
                      (TensorSpec("image", "float32", IMAGE),)),
        ]
    if kind == "stage1":
        return [
            GraphSpec("encoder", Stage1EncoderGraph(model),
                      (TensorSpec("image", "float32", IMAGE),),
                      (TensorSpec("latent", "float32", _latent(d)), TensorSpec("indices", "int64", tokens))),
            GraphSpec("decoder", DecoderGraph(model),
                      (TensorSpec("latent", "float32", _latent(d)),),
                      (TensorSpec("image", "float32", IMAGE),)),
        ]
    raise ValueError(f"unsupported model kind {kind!r}")
