"""One backend, measured in its own process, so that its peak host memory is its own.

    python -m quantart_benchmarks.worker SPEC.json RESULT.json

SPEC: {"backend", "model_dir", "checkpoint", "resolutions", "batch_sizes", "style_cache" (list of
"off"/"on"), "warmup", "iters", "assets", "fidelity_out" (npz path or null), "device"}.
Imports only numpy/Pillow until the backend itself is set up (a runtime backend never imports torch).
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from quantart_runtime.util import atomic_open, one_line, write_json

from .measure import max_rss_mb, rss_mb, summarize, time_calls
from .samples import STYLE_SIZE, content_batch, fidelity_pairs, style_images, style_variants

GRAPH_PARTS = ("content_encoder", "style_encoder", "sga", "decoder", "pre_post")


def make_backend(spec: dict):
    """The bench object of ``spec['backend']``: TorchBench for ``torch-*``, else RuntimeBench."""
    name = spec["backend"]
    if name.startswith("torch-"):
        from .torch_backends import TorchBench
        return TorchBench(name, spec["checkpoint"], device=spec.get("device"))
    from .runtime_backends import RuntimeBench
    return RuntimeBench(name, spec["model_dir"])


def measure_e2e(bench, spec: dict, res: int, batch: int, mode: str, baseline_mb: float) -> dict:
    """Time end-to-end stylization at ``res``² × ``batch`` with the style cache ``mode`` (on: one encoded
    style reused; off: a new style variant per call); returns the run record (latency summary,
    first-call time, memory).
    """
    warmup, iters = int(spec["warmup"]), int(spec["iters"])
    assets = Path(spec["assets"])
    contents = content_batch(res, batch, assets)
    style = style_images(STYLE_SIZE, assets)[0]
    if mode == "on":
        code = bench.encode_style(style)
        fn = lambda i: bench.stylize(contents, code)  # noqa: E731
    else:
        variants = style_variants(style, max(warmup, 1) + iters)
        fn = lambda i: bench.stylize(contents, variants[i])  # noqa: E731
    bench.reset_device_peak()
    times, first, peak = time_calls(fn, warmup, iters, bench.sync, memory=True)
    return {"resolution": res, "batch": batch, "style_cache": mode, "e2e": summarize(times, batch),
            "first_call_s": first, "peak_rss_mb": peak, "rss_delta_mb": peak - baseline_mb,
            "device_peak_mb": bench.device_peak_mb()}


def measure_graphs(bench, spec: dict, res: int, batch: int) -> dict:
    """Time each graph (and pre/post-processing) alone at ``res``² × ``batch``; returns the record."""
    warmup, iters = int(spec["warmup"]), int(spec["iters"])
    assets = Path(spec["assets"])
    calls = bench.graph_calls(content_batch(res, batch, assets), style_images(STYLE_SIZE, assets)[0])
    graphs = {}
    for part in GRAPH_PARTS:
        times, _, _ = time_calls(calls[part], warmup, iters, bench.sync, memory=False)
        # the style encoder runs once per batch on one style image: per-call time, batch 1
        graphs[part] = summarize(times, 1 if part == "style_encoder" else batch)
    return {"resolution": res, "batch": batch, "graphs": graphs}


def run_fidelity(bench, spec: dict) -> dict:
    """Stylize the sample (content, style) pairs and save images and tokens to ``spec['fidelity_out']``
    (npz, atomically); returns ``{file, pairs}``.
    """
    import numpy as np

    images, tokens = [], []
    for content, style in fidelity_pairs(Path(spec["assets"])):
        image, tok = bench.fidelity(content, style)
        images.append(image)
        tokens.append(tok)
    out = Path(spec["fidelity_out"])
    with atomic_open(out) as f:
        np.savez(f, images=np.stack(images), tokens=np.stack(tokens))
    return {"file": str(out), "pairs": len(images)}


def run(spec: dict) -> dict:
    """Set up the backend of ``spec`` and measure everything it asks for; returns the result dict
    (``status`` ok/failed, runs, graphs, errors, fidelity, memory). Errors of one configuration are
    recorded and the others still run.
    """
    result = {"backend": spec["backend"], "status": "ok", "error": None, "runs": [], "graphs": [],
              "errors": [], "fidelity": None}
    result["baseline_rss_mb"] = rss_mb()
    bench = make_backend(spec)
    t0 = time.perf_counter()
    try:
        result["info"] = bench.setup()
    except Exception as exc:
        result.update(status="failed", error=f"setup: {one_line(exc, with_type=True)}", build_s=None)
        return result
    result["build_s"] = time.perf_counter() - t0
    result["after_setup_rss_mb"] = rss_mb()
    baseline = result["baseline_rss_mb"]
    try:
        if spec.get("fidelity_out"):
            try:
                result["fidelity"] = run_fidelity(bench, spec)
            except Exception as exc:
                result["errors"].append(f"fidelity: {one_line(exc, with_type=True)}")
        for res in spec["resolutions"]:
            for batch in spec["batch_sizes"]:
                for mode in spec["style_cache"]:
                    try:
                        result["runs"].append(measure_e2e(bench, spec, res, batch, mode, baseline))
                    except Exception as exc:
                        result["errors"].append(f"{res}px batch {batch} cache {mode}: {one_line(exc, with_type=True)}")
                if spec.get("graph_breakdown", True):
                    try:
                        result["graphs"].append(measure_graphs(bench, spec, res, batch))
                    except Exception as exc:
                        result["errors"].append(f"{res}px batch {batch} graphs: {one_line(exc, with_type=True)}")
        if hasattr(bench, "graph_call_counts"):
            result["graph_call_counts"] = bench.graph_call_counts()
    finally:
        bench.close()
    result["peak_rss_mb"] = max_rss_mb()
    if not result["runs"] and result["errors"]:
        result.update(status="failed", error=result["errors"][0])
    return result


def main(argv=None) -> int:
    """``python -m quantart_benchmarks.worker SPEC.json RESULT.json``: run and write the result
    atomically; returns 0 (a failure is recorded in the result), 2 on a bad command line.
    """
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m quantart_benchmarks.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = run(spec)
    except Exception as exc:
        traceback.print_exc()
        result = {"backend": spec.get("backend"), "status": "failed", "error": one_line(exc, with_type=True)}
    write_json(Path(argv[1]), result, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
