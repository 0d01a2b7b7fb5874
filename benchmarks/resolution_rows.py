"""`quantart bench` rows for large photos: per content size (W x H), untiled vs the streaming executor vs
diffusers-style naive tiles, each in its own process (its peak RSS is its own).

Each row: time (s), peak RSS over the loaded model (MiB), temporary disk (the streaming executor's stats,
when it reports them) and fidelity against the untiled result where untiled fits the memory budget
(PSNR, max |Δ|, share of pixels within 1 uint8 level). A mode that cannot run here is recorded as
``unavailable`` with the reason: untiled above the memory budget; streaming where this build's
``Stylizer.stylize`` has no ``streaming=`` option. The backend is ONNX Runtime (CPU, or CUDA when present),
the default; the content is assets/content/1.jpg covered to W x H, the style assets/style/1.jpg at 256.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

MODES = ("untiled", "streaming", "naive")
DEFAULT_NAIVE_TILE = 512   # diffusers' default tile (sample_size 512)

_CHILD = textwrap.dedent("""
    import inspect, json, resource, sys, time
    from pathlib import Path
    import numpy as np
    from quantart_runtime import Stylizer, load_image
    from quantart_benchmarks.naive_tiling import naive_tiled_stylize, tile_count
    from quantart_benchmarks.samples import ASSETS, STYLE_SIZE, photo

    model, mode, w, h, tile, out_npy, budget = sys.argv[1:8]
    w, h, tile = int(w), int(h), int(tile)
    st = Stylizer.load(model, backend="onnxruntime")
    if budget != "-":
        st.set_memory_budget(budget)
    code = st.encode_style(load_image(ASSETS / "style" / "1.jpg"), size=STYLE_SIZE)
    content = photo(ASSETS / "content" / "1.jpg", w, h)
    tokens = int(np.prod(code.latent.shape[2:]))
    rec = {"mode": mode, "width": w, "height": h, "backend": st.backend,
           "providers": list(getattr(st.runner, "providers", []) or []),
           "linear_attention": bool(getattr(st.runner, "linear_attention", False)),
           "budget_gib": st.size_policy.budget / 2**30,
           "untiled_estimate_gib": st.size_policy.geometry.peak_bytes(h, w, 1, tokens) / 2**30}
    streaming = "streaming" in inspect.signature(st.stylize).parameters
    if mode == "untiled" and not st.size_policy.fits(h, w, 1, tokens):
        rec.update(status="unavailable", reason=f"untiled needs {rec['untiled_estimate_gib']:.2f} GiB, over the "
                                                f"memory budget of {rec['budget_gib']:.2f} GiB")
    elif mode == "streaming" and not streaming:
        rec.update(status="unavailable", reason="this build's Stylizer has no streaming executor "
                                                "(Stylizer.stylize takes no streaming=)")
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        if mode == "untiled":
            out = st.stylize(content, code, **({"streaming": "never"} if streaming else {}))
        elif mode == "streaming":
            out = st.stylize(content, code, streaming="always")
        else:
            out = naive_tiled_stylize(st, content, code, tile)
            rec["tiles"] = tile_count(h, w, tile, st.stride)
            rec["tile"] = tile
        rec["seconds"] = time.perf_counter() - t0
        rec["peak_rss_over_loaded_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20
        run = getattr(st, "last_run", None)   # the streaming executor's record (quantart_runtime.streaming.RunInfo)
        if run is not None and mode != "naive":
            rec["streamed"] = bool(run.streamed)
            if run.streamed:
                rec.update(tiles=int(run.tiles), temp_disk_mib=run.peak_disk_bytes / 2**20,
                           store_ram_mib=run.peak_store_bytes / 2**20,
                           predicted_peak_mib=run.predicted_peak_bytes / 2**20)
        np.save(out_npy, out)
        rec["status"] = "ok"
    print(json.dumps(rec))
""")


def parse_size(text: str) -> tuple[int, int]:
    """"N" -> (N, N); "WxH" -> (W, H) (width first, as photos are named). Raises ``ValueError``."""
    t = str(text).strip().lower().replace("×", "x")
    parts = t.split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not a size (N or WxH)")
    w, h = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    if w < 1 or h < 1:
        raise ValueError(f"{text!r}: sides must be positive")
    return w, h


def size_label(w: int, h: int) -> str:
    """``1024²`` for squares, ``4032x3024`` otherwise."""
    return f"{w}²" if w == h else f"{w}x{h}"


def _fidelity(ours: np.ndarray, ref: np.ndarray) -> dict:
    from .naive_tiling import fidelity

    return fidelity(ours, ref)


def measure_rows(model_dir, sizes: list[tuple[int, int]], work: Path, naive_tile: int = DEFAULT_NAIVE_TILE,
                 budget: str | None = None, timeout_s: float | None = None,
                 log=lambda msg: None) -> list[dict]:
    """One row per (size, mode), each mode in its own process; fidelity against the untiled row."""
    rows = []
    for w, h in sizes:
        outs = {}
        for mode in MODES:
            npy = work / f"{mode}_{w}x{h}.npy"
            log(f"resolution rows: {size_label(w, h)} {mode}")
            try:
                done = subprocess.run([sys.executable, "-c", _CHILD, str(model_dir), mode, str(w), str(h),
                                       str(naive_tile), str(npy), budget or "-"],
                                      capture_output=True, text=True, timeout=timeout_s)
                lines = done.stdout.strip().splitlines()
                if done.returncode == 0 and lines:
                    rec = json.loads(lines[-1])
                else:
                    tail = (done.stderr or "").strip().splitlines()
                    rec = {"mode": mode, "width": w, "height": h, "status": "failed",
                           "reason": f"exit {done.returncode}: {tail[-1] if tail else 'no output'}"}
            except subprocess.TimeoutExpired:
                rec = {"mode": mode, "width": w, "height": h, "status": "failed",
                       "reason": f"timed out after {timeout_s:g} s"}
            if rec.get("status") == "ok" and npy.exists():
                outs[mode] = np.load(npy)
                npy.unlink()
            rows.append(rec)
        ref = outs.get("untiled")
        for rec in rows[-len(MODES):]:
            if rec["mode"] != "untiled" and ref is not None and rec["mode"] in outs:
                rec["fidelity_vs_untiled"] = _fidelity(outs[rec["mode"]], ref)
    return rows


def markdown_rows(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table."""
    lines = ["| Size | Mode | Status | Time (s) | Peak RSS over loaded (MiB) | Temp disk (MiB) | "
             "PSNR vs untiled (dB) | max abs diff | ≤ 1 level (%) | Note |", "|" + "---|" * 10]
    for r in rows:
        f = r.get("fidelity_vs_untiled") or {}

        def num(v, fmt=".1f"):
            return "–" if v is None else format(v, fmt)

        note = r.get("reason", "")
        if r.get("mode") == "naive" and r.get("tiles"):
            note = f"{r['tiles']} tiles of {r['tile']} px per graph" + (f"; {note}" if note else "")
        lines.append(f"| {size_label(r['width'], r['height'])} | {r['mode']} | {r['status']} | "
                     f"{num(r.get('seconds'))} | {num(r.get('peak_rss_over_loaded_mib'), '.0f')} | "
                     f"{num(r.get('temp_disk_mib'), '.0f')} | {num(f.get('psnr_db'))} | {num(f.get('max_abs'), 'd')} | "
                     f"{num(None if 'within_1_level' not in f else 100 * f['within_1_level'], '.2f')} | {note} |")
    return lines
