"""Training throughput of both QuantArt stages: images/s and peak memory per training step
(generator + discriminator update, as quantart.training runs them). A report, not a timed test.

    python -m quantart_benchmarks.train_throughput            # tiny config on CPU (+ official on a GPU)
    python -m quantart_benchmarks.train_throughput --official # also the official config on CPU (slow)
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch


def _step_fn(stage: str, spec: dict, device: str, tmp: Path):
    import quantart
    from quantart.training import build_training_model

    if stage == "stage2":
        m = spec["model"]
        vq = quantart.BaseVQGAN(m["ddconfig"], m["n_embed"], m["embed_dim"])
        path = quantart.save_model(vq, tmp / "vq")
        spec["model"] = {**m, "checkpoint_encoder": str(path), "checkpoint_decoder": str(path)}
    model = build_training_model(spec).to(device)
    b, s = spec["batch_size"], spec["size"]
    x, ref = torch.rand(b, 3, s, s, device=device) * 2 - 1, torch.rand(b, 3, s, s, device=device) * 2 - 1
    if stage == "stage1":
        gen = [p for n, p in model.named_parameters() if not n.startswith("loss.")]
        opt_g = torch.optim.Adam(gen, 1e-4, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(model.loss.discriminator.parameters(), 1e-4, betas=(0.5, 0.9))

        def step():
            xr, q = model(x)
            g, _ = model.loss(q, x, xr, 0, 10 ** 9, last_layer=model.get_last_layer())
            opt_g.zero_grad()
            g.backward()
            opt_g.step()
            with torch.no_grad():
                xr, q = model(x)
            d, _ = model.loss(q, x, xr, 1, 10 ** 9)
            opt_d.zero_grad()
            d.backward()
            opt_d.step()
    else:
        for p in model.frozen_parameters():
            p.requires_grad = False
        opt_g = torch.optim.Adam(model.model_x2y.parameters(), 1e-4, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(model.loss.discriminator.parameters(), 1e-4, betas=(0.5, 0.9))

        def step():
            with torch.no_grad():
                h = model.content_latent(x)
                qr = model.encode_real(ref)[0]
            qx, qy, diff, _ = model.stylize_latent(h, qr)
            g, _, _ = model.loss(diff, qr, qy, qx.detach(), 0, 10 ** 9)
            opt_g.zero_grad()
            g.backward()
            opt_g.step()
            with torch.no_grad():
                _, qy, diff, _ = model.stylize_latent(h, qr)
            d, _ = model.loss(diff, qr, qy, qx.detach(), 1, 10 ** 9)
            opt_d.zero_grad()
            d.backward()
            opt_d.step()
    return step


def measure(stage: str, preset_name: str, device: str, steps: int, warmup: int = 2) -> dict:
    """Time ``steps`` training steps (one generator and one discriminator update each) of ``stage``
    with preset ``preset_name`` on ``device`` after ``warmup`` steps
    returns s/step, images/s and
    the memory peak (CUDA allocated or process RSS).
    """
    from quantart.training import preset

    spec = preset(stage, preset_name)
    if preset_name == "official" and stage == "stage1":
        spec["loss"]["perceptual_weight"] = 0.0  # no VGG download in a benchmark; LPIPS adds ~15% on GPU
    with tempfile.TemporaryDirectory() as tmp:
        step = _step_fn(stage, spec, device, Path(tmp))
        for _ in range(warmup):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"stage": stage, "config": preset_name, "device": device, "batch": spec["batch_size"],
            "size": spec["size"], "steps": steps, "s_per_step": round(dt / steps, 4),
            "images_per_s": round(spec["batch_size"] * steps / dt, 2),
            "peak_mem_mib": round(peak, 1), "peak_kind": "cuda allocated" if device == "cuda" else "process RSS"}


def main(argv=None):
    """Print one JSON line per (preset, device, stage) measured: tiny on CPU, official on CPU with
    ``--official``, official on CUDA when present.
    """
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--official", action="store_true", help="also the official config on CPU")
    args = ap.parse_args(argv)
    runs = [("tiny", "cpu")]
    if args.official:
        runs.append(("official", "cpu"))
    if torch.cuda.is_available():
        runs.append(("official", "cuda"))
    for name, device in runs:
        for stage in ("stage1", "stage2"):
            print(json.dumps(measure(stage, name, device, args.steps if device == "cuda" or name == "tiny" else 2)),
                  flush=True)


if __name__ == "__main__":
    main()
