"""The torch backends under test: eager FP32 (the reference), FP16 and torch.compile (GPU only), and
torch-bf16: eager with CPU autocast to bfloat16 (oneDNN; convolutions and matmuls BF16, GroupNorm and
softmax FP32 by autocast's rules) -- the peer a torch user would try first on a BF16 CPU.

Each exposes the bench interface the worker drives (see worker.py): setup(), encode_style(),
stylize(), graph_calls(), fidelity(), sync(), device_peak_mb().
"""
from __future__ import annotations

import numpy as np

from .samples import to_model_input, to_uint8

GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    import torch
    return torch.cuda.is_available()


def availability(name: str, checkpoint) -> tuple[bool, str]:
    """(available, reason) for a torch backend, without building anything."""
    if checkpoint is None:
        return False, ("no torch checkpoint: pass --checkpoint (manifest.json's source checkpoint "
                       "was not found)")
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if name in ("torch-fp16", "torch-compile") and not torch.cuda.is_available():
        return False, "GPU only: torch sees no CUDA device"
    return True, ""


class TorchStyleCode:
    """A style encoded once (the torch counterpart of the runtime's StyleCode)."""

    def __init__(self, quant_ref):
        self.quant_ref = quant_ref


class TorchBench:
    """Stylization with the PyTorch model (quantart.StyleTransfer), inputs/outputs HWC uint8."""

    def __init__(self, name: str, checkpoint, device: str | None = None):
        self.name = name
        self.checkpoint = checkpoint
        self.precision = {"torch-fp16": "fp16", "torch-bf16": "bf16"}.get(name, "fp32")
        self.autocast = name == "torch-bf16"
        self.compiled = name == "torch-compile"
        self.device_kind = device
        self.model = None

    # -- life cycle ---------------------------------------------------------------------------
    def setup(self) -> dict:
        """Load the checkpoint as a StyleTransfer on the device (FP16 / torch.compile as the backend name
        says); returns info (device, precision). Raises the checkpoint loader's errors.
        """
        import torch

        from quantart import load_model

        self.torch = torch
        if self.device_kind is None:
            self.device_kind = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device_kind)
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32   # bf16: autocast
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        model = load_model(self.checkpoint).eval().to(self.device, self.dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.stride = model.stride
        self.content_latent = model.content_latent
        self.encode_real = model.encode_real
        self.stylize_latent = model.stylize_latent
        self.decode = model.decode
        if self.autocast:
            def bf16(fn):
                def run(*args, **kwargs):
                    with torch.autocast(self.device.type, dtype=torch.bfloat16):
                        return fn(*args, **kwargs)
                return run

            self.content_latent, self.encode_real = bf16(model.content_latent), bf16(model.encode_real)
            self.stylize_latent, self.decode = bf16(model.stylize_latent), bf16(model.decode)
        if self.compiled:
            self.content_latent = torch.compile(model.content_latent)
            self.encode_real = torch.compile(model.encode_real)
            self.stylize_latent = torch.compile(model.stylize_latent)
            self.decode = torch.compile(model.decode)
        return {"device": str(self.device), "precision": self.precision, "compiled": self.compiled}

    def sync(self) -> None:
        """Wait for the device's queued work (CUDA), so timings cover it."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def reset_device_peak(self) -> None:
        """Reset the CUDA peak memory counter (no-op on CPU)."""
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def device_peak_mb(self) -> float | None:
        """Peak CUDA memory allocated since the last reset, in MiB (``None`` on CPU)."""
        if self.device.type == "cuda":
            return self.torch.cuda.max_memory_allocated(self.device) / 2**20
        return None

    # -- the pipeline -------------------------------------------------------------------------
    def _to_tensor(self, images):
        x = self.torch.from_numpy(to_model_input(images))
        return x.to(self.device, self.dtype, non_blocking=True)

    def _from_tensor(self, y):
        return to_uint8(y.float().cpu().numpy())

    def encode_style(self, style_u8: np.ndarray) -> TorchStyleCode:
        """Encode the HWC uint8 style image at ``STYLE_SIZE`` into a :class:`TorchStyleCode`."""
        with self.torch.inference_mode():
            quant_ref, _, _ = self.encode_real(self._to_tensor([style_u8]))
        return TorchStyleCode(quant_ref)

    def _forward(self, x, quant_ref):
        """Content batch (NCHW) + quantized style latent → (images NCHW, SGA output tokens)."""
        h_x = self.content_latent(x)
        quant_ref = quant_ref.expand(x.shape[0], *quant_ref.shape[1:])
        _, quant_y, _, indices = self.stylize_latent(h_x, quant_ref, 1.0, 1.0)
        return self.decode(quant_y), indices

    def stylize(self, contents: list[np.ndarray], style) -> list[np.ndarray]:
        """HWC uint8 contents (equal sizes, multiples of the stride) + a style image or a
        TorchStyleCode → HWC uint8 images."""
        with self.torch.inference_mode():
            code = style if isinstance(style, TorchStyleCode) else self.encode_style(style)
            y, _ = self._forward(self._to_tensor(contents), code.quant_ref)
            return self._from_tensor(y)

    def fidelity(self, content_u8: np.ndarray, style_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One (content, style) pair → (HWC uint8 image, SGA output tokens (h, w) int64)."""
        with self.torch.inference_mode():
            code = self.encode_style(style_u8)
            y, indices = self._forward(self._to_tensor([content_u8]), code.quant_ref)
            return self._from_tensor(y)[0], indices[0].cpu().numpy().astype(np.int64)

    def graph_calls(self, contents: list[np.ndarray], style_u8: np.ndarray) -> dict:
        """Per-graph callables with their inputs prepared (the ONNX graphs' boundaries)."""
        torch = self.torch
        with torch.inference_mode():
            x = self._to_tensor(contents)
            s = self._to_tensor([style_u8])
            h_x = self.content_latent(x)
            quant_ref = self.encode_real(s)[0]
            ref_b = quant_ref.expand(x.shape[0], *quant_ref.shape[1:]).contiguous()
            quant_y = self.stylize_latent(h_x, ref_b, 1.0, 1.0)[1]
            y = self.decode(quant_y)

        def wrap(fn):
            def call(_i):
                with torch.inference_mode():
                    return fn()
            return call

        return {
            "content_encoder": wrap(lambda: self.content_latent(x)),
            "style_encoder": wrap(lambda: self.encode_real(s)),
            "sga": wrap(lambda: self.stylize_latent(h_x, ref_b, 1.0, 1.0)),
            "decoder": wrap(lambda: self.decode(quant_y)),
            "pre_post": wrap(lambda: (self._to_tensor(contents), self._from_tensor(y))),
        }

    def close(self) -> None:
        """Drop the model and free cached device memory."""
        self.model = None

