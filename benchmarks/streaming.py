"""Streaming benchmark: the exact tiled executor against the untiled runtime, official architecture.

    python -m quantart_benchmarks.streaming --out benchmarks/results/streaming_cpu [--model DIR] [--skip-12mp]

Builds the official landscape2art architecture with random weights (codebooks at a trained model's
scale, as tests/test_export_full.py) unless ``--model`` names an export, then on ONNX Runtime CPU:
  * 1024² and 1536×1024: untiled vs streamed in the same run — fraction of pixels within one uint8
    level, max |Δ|, PSNR, and the executor's overhead (streamed / untiled time − 1);
  * 4032×3024 content + 256² style in a subprocess under RLIMIT_AS (loaded model + 4 GiB): peak RSS
    above the loaded model, temporary disk, time per pixel against the untiled time at 1024²
    extrapolated by FLOPs (``graph_flops``, attention's quadratic term included).
Writes ``<out>.json`` and ``<out>.md``. ``compare(stylizer, image, code)`` is the row function other
benchmarks (``quantart bench``) call.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

LIMIT_OVER = 4 << 30


def compare(stylizer, image: np.ndarray, code, untiled: bool = True, repeats: int = 1) -> dict:
    """Stylize ``image`` streamed (and untiled when ``untiled`` and it fits): times, tiles, disk, fidelity.

    With ``repeats`` > 0 both paths first run once at this size (warm: ONNX Runtime's arena and the
    executor's kept buffers grown, as in a service), then alternate ``repeats`` times; the times are the
    best of those runs (``repeats=0``: one cold run each, streamed first)."""
    from quantart_runtime.util import psnr_uint8

    fits = untiled and stylizer.size_policy.fits(*image.shape[:2], 1, int(np.prod(code.latent.shape[2:])))
    paths = ["always"] + (["never"] if fits else [])
    best, out = {}, {}
    for i in range(max(repeats, 0) + 1):
        for mode in paths:
            t0 = time.perf_counter()
            out[mode] = stylizer.stylize(image, code, streaming=mode)
            dt = time.perf_counter() - t0
            if mode == "always":
                run = stylizer.last_run
            if i > 0 or repeats == 0:
                best[mode] = min(best.get(mode, dt), dt)
    row = {"size": f"{image.shape[1]}x{image.shape[0]}", "streamed_s": best["always"], "tiles": run.tiles,
           "temp_disk_bytes": run.peak_disk_bytes, "predicted_peak_bytes": run.predicted_peak_bytes,
           "runs": max(repeats, 1), "warm": repeats > 0}
    if fits:
        ours, ref = out["always"], out["never"]
        d = np.abs(ours.astype(int) - ref.astype(int))
        row.update(untiled_s=best["never"], within_1_level=float(np.mean(d <= 1)), max_abs=int(d.max()),
                   psnr_db=psnr_uint8(ours, ref), overhead=best["always"] / best["never"] - 1.0)
    return row


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth photo-like test image (low-frequency colour fields plus mild noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([127 + 100 * np.sin(xx / (w / (3 + c)) + yy / (h / (2 + c)) + c) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def build_official(work: Path) -> Path:
    """Export the official architecture with random weights (FP32, graphs verified on the tiny model)."""
    import torch

    from quantart.models import build_model
    from quantart.models.config import official_config
    from quantart_export import export_model

    torch.manual_seed(0)
    model = build_model(official_config("stage2")).eval()
    with torch.no_grad():
        for quantizer in (model.quantize_enc, model.quantize_dec):
            quantizer.embedding.weight.normal_()
    ckpt = work / "landscape2art.pt"
    torch.save(model.state_dict(), ckpt)
    return export_model(ckpt, work / "landscape2art_onnx", precision="fp32", verify=False, force=True)


BOUNDED = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from quantart_runtime import Stylizer, stream_dispatch
    from streaming import _photo
    st = Stylizer.load(sys.argv[1], backend="onnxruntime")
    code = st.encode_style(_photo(256, 256, 1), size=256)
    stream_dispatch.executor(st).runner()
    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    base_rss, base_vm = vm("VmRSS:"), vm("VmSize:")
    limit = base_vm + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    st.set_memory_budget(sys.argv[3])
    h, w = 3024, 4032
    img = _photo(h, w)
    untiled = st.size_policy.geometry.peak_bytes(h, w, 1, 256)
    t0 = time.perf_counter()
    last = [0.0]
    def progress(done, total):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"tiles {done}/{total}", file=sys.stderr, flush=True)
    out = st.stylize(img, code, progress=progress)
    r = st.last_run
    print(json.dumps({"size": "4032x3024", "seconds": time.perf_counter() - t0, "streamed": r.streamed,
                      "tiles": r.tiles, "temp_disk_bytes": r.peak_disk_bytes, "store_ram_bytes": r.peak_store_bytes,
                      "predicted_peak_bytes": r.predicted_peak_bytes, "predicted_disk_bytes": r.predicted_disk_bytes,
                      "peak_rss_over_loaded": vm("VmHWM:") - base_rss, "loaded_rss": base_rss,
                      "rlimit_as_over_loaded": int(sys.argv[2]), "untiled_estimate": untiled,
                      "shape": list(out.shape)}))
""")


def bounded_12mp(model_dir: Path, budget: str = "3G") -> dict:
    """The 12 MP run in a subprocess under RLIMIT_AS = loaded model + 4 GiB."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", BOUNDED, str(model_dir), str(LIMIT_OVER), budget,
                           str(Path(__file__).resolve().parent)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"size": "4032x3024", "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _flops(config: dict, h: int, w: int) -> float:
    """FLOPs of an untiled run at h × w with a 256² style (square-equivalent side for graph_flops)."""
    from .flops import graph_flops

    side = int(round((h * w) ** 0.5 / 16)) * 16
    f = graph_flops(config, side, 256)
    return float(f["content_encoder"] + f["sga"] + f["decoder"])


def report(rows: list, bounded: dict | None, extrapolation: dict | None) -> str:
    """The Markdown report of the streaming benchmark (exactness rows, the bounded 12 MP run, FLOP extrapolation)."""
    from quantart_runtime.verify import cpu_model

    from .hardware import hardware_info, now_utc

    hw = hardware_info()
    warm = all(r.get("warm") for r in rows)
    lines = ["# Streaming executor vs untiled (official architecture, random weights, ONNX Runtime CPU)", "",
             f"{now_utc()}. Machine: {cpu_model()}, {hw['usable_cpus']} CPUs, {hw['memory_gb']} GiB; "
             "shared with other jobs, so "
             "times are noisy: the two paths ran side by side in one process"
             + (f", each warmed once at the size then best of {rows[0].get('runs', 1)} alternating runs."
                if rows and warm else ", one run each."), "",
             "| size | untiled s | streamed s | overhead | tiles | ≤1 level | max abs Δ | PSNR dB | temp disk |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r.get('untiled_s', float('nan')):.1f} | {r['streamed_s']:.1f} | "
                     f"{100 * r.get('overhead', float('nan')):.1f} % | {r['tiles']} | "
                     f"{100 * r.get('within_1_level', float('nan')):.3f} % | {r.get('max_abs', '-')} | "
                     f"{r.get('psnr_db', float('nan')):.1f} | {r['temp_disk_bytes'] / 2**20:.0f} MiB |")
    if bounded:
        lines += ["", "## 4032×3024 content, 256² style, under RLIMIT_AS = loaded model + 4 GiB", "",
                  "```", json.dumps(bounded, indent=1), "```"]
    if extrapolation:
        lines += ["", f"Per-pixel time at 12 MP vs the FLOP-extrapolated untiled time: "
                      f"{extrapolation['ratio']:.2f}× (untiled 1024² {extrapolation['untiled_1024_s']:.1f} s × "
                      f"{extrapolation['flop_ratio']:.1f} FLOP ratio = {extrapolation['predicted_s']:.0f} s)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``python -m quantart_benchmarks.streaming``: run the benchmark and write its report (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/streaming_cpu")
    ap.add_argument("--model", default=None)
    ap.add_argument("--skip-12mp", action="store_true")
    ap.add_argument("--sizes", default="1024x1024,1536x1024")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs of each path after a warm run (0: one cold run)")
    args = ap.parse_args(argv)
    from quantart_runtime import Stylizer

    work = Path(tempfile.mkdtemp(prefix="quantart-streaming-bench-"))
    model_dir = Path(args.model) if args.model else build_official(work)
    st = Stylizer.load(model_dir, backend="onnxruntime")
    code = st.encode_style(_photo(256, 256, 1), size=256)
    rows = []
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        rows.append(compare(st, _photo(h, w), code, repeats=args.repeats))
        print(json.dumps(rows[-1]), flush=True)
    config = st.manifest["architecture"]
    st.close()
    bounded = extrapolation = None
    _write(Path(args.out), rows, bounded, extrapolation)   # the rows so far, should the 12 MP run be cut short
    if not args.skip_12mp:
        bounded = bounded_12mp(model_dir)
        base = next((r for r in rows if r["size"] == "1024x1024" and "untiled_s" in r), None)
        if base and "seconds" in bounded:
            flop_ratio = _flops(config, 3024, 4032) / _flops(config, 1024, 1024)
            predicted = base["untiled_s"] * flop_ratio
            extrapolation = {"untiled_1024_s": base["untiled_s"], "flop_ratio": flop_ratio,
                             "predicted_s": predicted, "ratio": bounded["seconds"] / predicted}
    print(_write(Path(args.out), rows, bounded, extrapolation))
    return 0


def _write(out: Path, rows, bounded, extrapolation) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "bounded": bounded,
                                                    "extrapolation": extrapolation}, indent=1))
    text = report(rows, bounded, extrapolation)
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
