"""Verification of the streaming schedule: the runtime's streaming executor (ONNX Runtime CPU, small
tiles with ragged edges so every halo rule runs) against PyTorch FP32 on the sample images, with the
thresholds of the untiled FP32 graphs (``quantart_export.verify``): latent max|Δ|, tie-tolerant token
agreement, image PSNR. Checks are reported under the graph name ``streaming``."""
from __future__ import annotations

import numpy as np
import torch

from .verify import SAMPLES_DIR, Check, _Judge, max_abs, sample_images

VERIFY_TILE = (3, 5)   # output pixels per tile at every step's resolution: ragged, unaligned cuts


@torch.no_grad()
def verify_streaming(model, directory, manifest: dict, resolutions, thresholds: dict,
                     samples_dir=SAMPLES_DIR, tile=VERIFY_TILE) -> list[Check]:
    """Run the streaming executor of ``directory`` (its ``manifest`` with the ``streaming`` section) on the
    first sample content and style at each resolution; compare with PyTorch."""
    from quantart_runtime.backends.onnxruntime import OnnxRuntimeRunner
    from quantart_runtime.streaming import StreamingExecutor

    runner = OnnxRuntimeRunner(directory, manifest, providers=["CPUExecutionProvider"])
    executor = StreamingExecutor(runner, manifest)
    ones = np.ones(1, np.float32)
    checks: list[Check] = []
    try:
        for height, width in resolutions:
            x, ref = (t[:1] for t in sample_images(height, width, samples_dir))
            quant_ref, _, info_ref = model.encode_real(ref)
            h_x = model.content_latent(x)
            _, quant_y, _, _ = model.stylize_latent(h_x, quant_ref, 1.0, 1.0)
            image = model.decode(quant_y).numpy()
            judge = _Judge("fp32", f"{height}x{width}", thresholds)
            (style_latent, style_tokens), _ = executor.encode_style(ref.numpy(), 1 << 30, tile=tile)
            judge.tokens("streaming style_encoder", style_tokens, info_ref[2].numpy())
            judge.latent("streaming style_encoder", style_latent, quant_ref.numpy(),
                         style_tokens == info_ref[2].numpy(), "latent max|Δ| (agreeing tokens)")
            y, _ = executor.stylize(x.numpy(), quant_ref.numpy(), ones, ones, 1 << 30, tile=tile)
            judge.image("streaming", y, image)
            latent = executor.run(["content_encoder"], {"image": x.numpy()},
                                  {"content": (height, width), "style": (height, width)}, 1 << 30,
                                  ("content_latent",), tile=tile)[0]["content_latent"]
            judge._add("streaming content_encoder", "latent max|Δ|", max_abs(latent, h_x.numpy()),
                       "latent_max_abs", False)
            checks.extend(judge.checks)
    finally:
        executor.close()
    return checks
