"""Verification data stored in a model directory: sample inputs with PyTorch FP32's reference outputs.

For each verification resolution, ``verification/reference_<H>x<W>.npz`` (compressed, no pickles)
holds the project's sample images as uint8 (``content`` (N, H, W, 3), ``style`` (N, H, W, 3)) and what
PyTorch FP32 computes from them, content i paired with style i, ratios 1:

    content_latent (N, D, h, w)   continuous content latent (content encoder output)
    content_indices (N, h, w)     its nearest codes in the content codebook (quantize_enc), int64
    content_codebook (K, D)       that codebook, so a torch-free verifier can tokenise any content latent
    style_latent (N, D, h, w)     quantized style latent, style_indices (N, h, w) int64
    stylized_latent (N, D, h, w)  SGA + nearest code, indices (N, h, w) int64
    image (N, H, W, 3) uint8      decoded stylized latent, post-processed as the runtime does

The runtime's torch-free verifier (``quantart_runtime.verify``) feeds these to any backend and
precision and judges each graph and the whole chain. Files are listed with their sha256 in the
manifest (``verification_data``). Stage 2 only (Stage 1 models are not stylized by the runtime).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from quantart_runtime.util import sha256_bytes, write_bytes

REFERENCE_DIR = "verification"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8 (exact for images that came from uint8)."""
    return np.rint((images.numpy().transpose(0, 2, 3, 1) + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def _from_uint8(images: np.ndarray) -> torch.Tensor:
    """NHWC uint8 -> NCHW float32 in [-1, 1], the runtime's preprocessing (x / 127.5 - 1)."""
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(x))


def _postprocess(image: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) float graph output -> (N, H, W, 3) uint8 (clip, rint((y + 1) * 127.5))."""
    return np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


@torch.no_grad()
def reference_arrays(model, height: int, width: int, samples_dir=None) -> dict[str, np.ndarray]:
    """The verification arrays (see the module docstring) of a Stage 2 model at height × width."""
    from .verify import SAMPLES_DIR, sample_images

    content, style = sample_images(height, width, SAMPLES_DIR if samples_dir is None else samples_dir)
    n = min(len(content), len(style))
    content_u8, style_u8 = _to_uint8(content[:n]), _to_uint8(style[:n])
    x, ref = _from_uint8(content_u8), _from_uint8(style_u8)
    h_x = model.content_latent(x)
    _, _, info_x = model.quantize_enc(h_x)
    quant_ref, _, info_ref = model.encode_real(ref)
    _, quant_y, _, indices_y = model.stylize_latent(h_x, quant_ref, 1.0, 1.0)
    image = model.decode(quant_y).numpy()
    return {"content": content_u8, "style": style_u8,
            "content_latent": h_x.numpy().astype(np.float32),
            "content_indices": info_x[2].numpy().astype(np.int64).reshape(h_x.shape[0], *h_x.shape[2:]),
            "content_codebook": model.quantize_enc.embedding.weight.detach().float().numpy(),
            "style_latent": quant_ref.numpy().astype(np.float32),
            "style_indices": info_ref[2].numpy().astype(np.int64).reshape(quant_ref.shape[0], *quant_ref.shape[2:]),
            "stylized_latent": quant_y.numpy().astype(np.float32),
            "indices": indices_y.numpy().astype(np.int64),
            "image": _postprocess(image)}


def write_reference_data(directory: Path, model, resolutions, samples_dir=None) -> list[dict] | None:
    """Write the verification files into ``directory`` (a model directory being built).

    Returns the manifest entries ``[{"file", "sha256", "resolution", "bytes"}]``, or None for a
    Stage 1 model. Raises ``FileNotFoundError`` when the sample images are missing.
    """
    if model.config["kind"] != "stage2":
        return None
    entries = []
    for height, width in resolutions:
        arrays = reference_arrays(model, int(height), int(width), samples_dir)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
        name = f"{REFERENCE_DIR}/reference_{height}x{width}.npz"
        (Path(directory) / REFERENCE_DIR).mkdir(exist_ok=True)
        write_bytes(Path(directory) / name, data)
        entries.append({"file": name, "sha256": sha256_bytes(data), "resolution": f"{height}x{width}",
                        "bytes": len(data)})
    return entries
