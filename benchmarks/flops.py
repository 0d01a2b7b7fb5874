"""Roofline inputs: FLOPs per graph (torch.utils.flop_counter on a meta-device model, so nothing
is computed) and the device's peak FLOP/s measured with a large matmul."""
from __future__ import annotations

import time

GRAPH_ORDER = ("content_encoder", "style_encoder", "sga", "decoder")


def graph_flops(config: dict, resolution: int, style_size: int = 256) -> dict[str, int]:
    """FLOPs of each exported graph at batch 1 (content resolution² ; the style at style_size²).

    Counted by FlopCounterMode (2 FLOPs per multiply-add of matmul/conv/bmm) on the torch model
    built on the meta device; the graphs' boundaries are those of the export (docs/model_format.md).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from quantart.models import build_model

    with torch.device("meta"):
        model = build_model(config).eval()
    x = torch.empty(1, 3, resolution, resolution, device="meta")
    s = torch.empty(1, 3, style_size, style_size, device="meta")

    def count(fn):
        counter = FlopCounterMode(display=False)
        with counter:
            out = fn()
        return int(counter.get_total_flops()), out

    with torch.no_grad():
        ce, h_x = count(lambda: model.content_latent(x))
        se, (quant_ref, _, _) = count(lambda: model.encode_real(s))
        sga, (_, quant_y, _, _) = count(lambda: model.stylize_latent(h_x, quant_ref, 1.0, 1.0))
        dec, _ = count(lambda: model.decode(quant_y))
    return {"content_encoder": ce, "style_encoder": se, "sga": sga, "decoder": dec}


def measure_peak_flops(device: str = "cpu", dtype: str = "fp32", n: int | None = None,
                       seconds: float = 1.0) -> dict:
    """Achievable FLOP/s of a large square matmul on `device` (best of repeated timings); ``dtype``
    fp32, fp16, bf16 or int8 (``torch._int_mm``: int8 x int8 -> int32, operations per second)."""
    import torch

    tdtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}.get(dtype, torch.float32)
    dev = torch.device(device)
    n = n or (2048 if dev.type == "cpu" else 8192)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    if dtype == "int8":
        a = torch.randint(-128, 128, (n, n), device=dev, dtype=tdtype)
        b = torch.randint(-128, 128, (n, n), device=dev, dtype=tdtype)
        matmul, label = torch._int_mm, "torch._int_mm"
    else:
        a = torch.randn(n, n, device=dev, dtype=tdtype)
        b = torch.randn(n, n, device=dev, dtype=tdtype)
        matmul, label = torch.matmul, "torch.matmul"

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    matmul(a, b)
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    reps = 0
    while reps < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
        reps += 1
        if reps >= 200:
            break
    return {"device": device, "dtype": dtype, "n": n, "flops_per_s": 2.0 * n**3 / best, "source": "measured",
            "method": f"best of {reps} {n}x{n} {dtype} {label}"}


def parse_flops(text: str) -> float:
    """'2.5e12', '2.5T', '800G' → FLOP/s."""
    text = str(text).strip()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
    if text and text[-1].lower() in scale:
        value = float(text[:-1]) * scale[text[-1].lower()]
    else:
        value = float(text)
    if not value > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {text!r}")
    return value
