"""The benchmark run: resolve the model, check which backends can run, measure each one in its own
worker process, compare fidelity against torch FP32, add the roofline, compute the targets, write
the report (JSON, Markdown, PNG plots)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import fidelity, hardware, plots, report, targets
from .samples import ASSETS, STYLE_SIZE

ALL_BACKENDS = report.BACKEND_ORDER
GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


class BenchError(ValueError):
    """Bad input to the benchmark (model directory, checkpoint, options); the message is one line."""


@dataclass
class BenchSettings:
    """What ``quantart bench`` measures: the model directory and output folder, the torch checkpoint
    (``None``: from manifest.json's source), backends, resolutions, batch sizes, style-cache modes,
    warm-up and timed iterations, the device peak FLOP/s (``None``: measured), the sample images,
    whether to time each graph, a per-worker timeout and the report's file name stem.
    """
    model_dir: str
    out_dir: str
    checkpoint: str | None = None
    backends: list[str] = field(default_factory=lambda: list(ALL_BACKENDS))
    resolutions: list[int] = field(default_factory=lambda: [256, 512])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    style_cache: list[str] = field(default_factory=lambda: ["off", "on"])
    warmup: int = 2
    iters: int = 10
    peak_flops: float | None = None
    assets: str = str(ASSETS)
    graph_breakdown: bool = True
    worker_timeout_s: float | None = None
    report_name: str = "bench"
    resolution_rows: str = "auto"        # "auto" | "on" | "off" (see split_sizes)
    naive_tile: int = 512


def split_sizes(sizes, max_res: int | None, rows: str = "auto") -> tuple[list[int], list[tuple[int, int]]]:
    """--resolutions -> (square sides for the backend matrix, (W, H) sizes for the resolution rows).

    ``sizes``: ints (N x N) or (W, H) pairs. The matrix takes the squares up to the model's ``max_res`` (all
    squares when it has none); the rows take every size with ``rows="on"``, none with ``"off"``, and with
    ``"auto"`` every size when one of them is above ``max_res`` or not square.
    """
    pairs = [(s, s) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in sizes]
    matrix = sorted({w for w, h in pairs if w == h and (not max_res or w <= max_res)})
    large = any(w != h or (max_res and max(w, h) > max_res) for w, h in pairs)
    wanted = rows == "on" or (rows == "auto" and large)
    return matrix, (pairs if wanted else [])


def load_model_manifest(model_dir) -> dict:
    """manifest.json of ``model_dir`` (every precision listed, sha256 not checked).

    Raises ``BenchError`` (one line) when the directory is missing or not a valid model directory.
    """
    from quantart_runtime import ModelError, load_manifest
    try:
        manifest = load_manifest(model_dir, precision=None, verify=False)
    except ModelError as exc:
        raise BenchError(str(exc)) from None
    if manifest["kind"] != "stage2":
        raise BenchError(f"model {model_dir}: a {manifest['kind']} export has no style transfer graphs; "
                         f"the benchmark needs a Stage 2 model")
    return manifest


def resolve_checkpoint(model_dir, manifest: dict, checkpoint) -> tuple[str | None, str]:
    """The torch checkpoint: --checkpoint, else manifest.json's source (absolute, beside the model
    directory, or relative to the current directory). Returns (path or None, note)."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.exists():
            raise BenchError(f"checkpoint {checkpoint}: no such file or directory")
        return str(path.resolve()), "from --checkpoint"
    source = (manifest.get("source") or {}).get("checkpoint")
    if not source:
        return None, "manifest.json names no source checkpoint"
    for cand in (Path(source), Path(model_dir) / source, Path(model_dir).parent / source):
        if cand.exists():
            return str(cand.resolve()), "from manifest.json source"
    return None, f"manifest.json's source checkpoint {source!r} was not found (pass --checkpoint)"


def _sha_matches(path: str, manifest: dict) -> bool | None:
    expected = (manifest.get("source") or {}).get("sha256")
    if not expected or not Path(path).is_file():
        return None
    from quantart_runtime.util import sha256_file
    return sha256_file(Path(path)) == expected


def availability(name: str, checkpoint, manifest: dict) -> tuple[bool, str]:
    """``(available, reason)`` of backend ``name`` here: torch backends need the checkpoint and
    torch/CUDA, runtime backends their libraries, device and graphs of ``manifest``.
    """
    if name.startswith("torch-"):
        from .torch_backends import availability as torch_availability
        return torch_availability(name, checkpoint)
    from .runtime_backends import availability as runtime_availability
    return runtime_availability(name, manifest)


def run_worker(spec: dict, workdir: Path, timeout_s: float | None) -> dict:
    """Measure one backend in its own process (``python -m quantart_benchmarks.worker``) so its peak
    memory is its own; returns the worker's result dict, or a ``failed`` record with the reason when
    the worker timed out (``timeout_s``) or exited without writing one.
    """
    name = spec["backend"]
    spec_path, result_path = workdir / f"{name}.spec.json", workdir / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    try:
        proc = subprocess.run([sys.executable, "-m", "quantart_benchmarks.worker", str(spec_path), str(result_path)],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"backend": name, "status": "failed", "error": f"worker timed out after {timeout_s:g} s"}
    if result_path.exists():
        return json.loads(result_path.read_text())
    tail = (proc.stderr or "").strip().splitlines()
    return {"backend": name, "status": "failed",
            "error": f"worker exited with code {proc.returncode}: {tail[-1] if tail else 'no output'}"}


def _peaks(settings: BenchSettings, results: dict) -> dict:
    if settings.peak_flops is not None:
        return {"given": {"flops_per_s": settings.peak_flops, "source": "--peak-flops"}}
    from .flops import measure_peak_flops
    peaks = {}
    devices = {(r.get("info") or {}).get("device", "cpu") for r in results.values() if r["status"] == "ok"}
    if any(d == "cpu" for d in devices):
        peaks["cpu_fp32"] = measure_peak_flops("cpu", "fp32")
    if any((r.get("info") or {}).get("precision") in ("bf16", "plan") and (r.get("info") or {}).get("device") == "cpu"
           for r in results.values() if r["status"] == "ok"):
        peaks["cpu_bf16"] = measure_peak_flops("cpu", "bf16")   # BF16 rows are judged against BF16 matmul
    if any((r.get("info") or {}).get("precision") == "int8" and (r.get("info") or {}).get("device") == "cpu"
           for r in results.values() if r["status"] == "ok"):
        peaks["cpu_int8"] = measure_peak_flops("cpu", "int8")   # INT8 rows: int8 x int8 -> int32 matmul
    if any(d.startswith("cuda") for d in devices):
        peaks["cuda_fp32"] = measure_peak_flops("cuda", "fp32")
        peaks["cuda_fp16"] = measure_peak_flops("cuda", "fp16")
    return peaks


def _peak_for(peaks: dict, info: dict) -> float | None:
    if "given" in peaks:
        return peaks["given"]["flops_per_s"]
    device = info.get("device", "cpu")
    precision = info.get("precision", "fp32")
    if device == "cpu":
        key = "cpu_bf16" if precision in ("bf16", "plan") and "cpu_bf16" in peaks else "cpu_fp32"
        key = "cpu_int8" if precision == "int8" and "cpu_int8" in peaks else key
    else:
        key = f"cuda_{precision}"
    return (peaks.get(key) or {}).get("flops_per_s")


def add_roofline(entry: dict, flops: dict, peaks: dict) -> None:
    """Achieved FLOP/s per graph (p50) and end to end, with the share of the device peak."""
    peak = _peak_for(peaks, entry.get("info") or {})

    def pct(rate):
        return None if not peak else 100.0 * rate / peak

    entry["roofline_graphs"], entry["roofline_e2e"] = [], []
    for g in entry.get("graphs", []):
        f = flops.get(str(g["resolution"]))
        if not f:
            continue
        row = {"resolution": g["resolution"], "batch": g["batch"], "peak_gflops_per_s": (peak or 0) / 1e9,
               "graphs": {}}
        for name in GRAPHS:
            n = f[name] * (1 if name == "style_encoder" else g["batch"])
            rate = n / (g["graphs"][name]["p50_ms"] / 1e3)
            row["graphs"][name] = {"gflop": n / 1e9, "gflops_per_s": rate / 1e9, "pct_of_peak": pct(rate) or 0.0}
        entry["roofline_graphs"].append(row)
    for run in entry.get("runs", []):
        f = flops.get(str(run["resolution"]))
        if not f:
            continue
        n = (f["content_encoder"] + f["sga"] + f["decoder"]) * run["batch"]
        if run["style_cache"] == "off":
            n += f["style_encoder"]
        rate = n / (run["e2e"]["p50_ms"] / 1e3)
        entry["roofline_e2e"].append({"resolution": run["resolution"], "batch": run["batch"],
                                      "style_cache": run["style_cache"], "gflop": n / 1e9,
                                      "gflops_per_s": rate / 1e9, "pct_of_peak": pct(rate)})


def add_overheads(entry: dict) -> None:
    """Add ``entry['overhead']``: per ``resolution/batch/cache mode``, the runtime overhead of the
    end-to-end time over the graphs it runs (see :func:`targets.overhead`).
    """
    entry["overhead"] = {}
    for g in entry.get("graphs", []):
        for mode in ("off", "on"):
            ov = targets.overhead(entry, g["resolution"], g["batch"], mode)
            if ov is not None:
                entry["overhead"][f"{g['resolution']}/{g['batch']}/{mode}"] = ov


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = lambda msg: None) -> dict:
    """Run the whole benchmark as ``settings`` says and write the report (JSON, Markdown, PNG plots)
    to ``settings.out_dir``.

    Every backend runs in a worker process; unavailable ones are recorded as skipped with the reason.
    Returns the report dict. Raises ``BenchError`` on a bad report name, unknown backend or model
    directory; ``OSError`` when the output folder cannot be written.
    """
    if not settings.report_name or "/" in settings.report_name or settings.report_name.startswith("."):
        raise BenchError(f"report name {settings.report_name!r} must be a plain file name stem")
    unknown = [b for b in settings.backends if b not in ALL_BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    manifest = load_model_manifest(settings.model_dir)
    matrix_sizes, row_sizes = split_sizes(settings.resolutions, (manifest.get("profile") or {}).get("max_res"),
                                          settings.resolution_rows)
    requested = settings.resolutions
    settings = replace(settings, resolutions=matrix_sizes)
    checkpoint, ckpt_note = resolve_checkpoint(settings.model_dir, manifest, settings.checkpoint)
    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep = {"schema": "quantart-bench/1", "created": hardware.now_utc(),
           "model": {"dir": str(Path(settings.model_dir).resolve()), "kind": manifest["kind"],
                     "latent_stride": manifest.get("latent_stride"), "embed_dim": manifest.get("embed_dim"),
                     "n_embed": manifest.get("n_embed"), "export_versions": manifest.get("versions"),
                     "checkpoint": checkpoint, "checkpoint_note": ckpt_note,
                     "checkpoint_matches_manifest": _sha_matches(checkpoint, manifest) if checkpoint else None},
           "settings": {**asdict(settings), "style_size": STYLE_SIZE},
           "hardware": hardware.hardware_info(), "software": hardware.software_info(),
           "load_average": {"start": hardware.load_average(), "end": None},
           "flops": {}, "peaks": {}, "backends": {}, "targets": [], "notes": [], "files": {},
           "resolution_rows": None}
    rep["settings"]["requested_sizes"] = [list(s) if not isinstance(s, int) else [s, s] for s in requested]
    if checkpoint is None:
        rep["notes"].append(f"no torch checkpoint ({ckpt_note}): torch backends, fidelity and FLOPs are skipped")
    if rep["model"]["checkpoint_matches_manifest"] is False:
        rep["notes"].append("the checkpoint's sha256 differs from manifest.json's source: fidelity compares "
                            "different weights")

    if checkpoint is not None:
        from quantart import load_model

        from .flops import graph_flops
        config = load_model(checkpoint).config
        for res in settings.resolutions:
            rep["flops"][str(res)] = graph_flops(config, res, STYLE_SIZE)

    with tempfile.TemporaryDirectory(prefix="quantart-bench-") as tmp:
        work = Path(tmp)
        base = {"model_dir": str(Path(settings.model_dir).resolve()), "checkpoint": checkpoint,
                "resolutions": settings.resolutions, "batch_sizes": settings.batch_sizes,
                "style_cache": settings.style_cache, "warmup": settings.warmup, "iters": settings.iters,
                "assets": settings.assets, "graph_breakdown": settings.graph_breakdown}
        results, ref_file = {}, None
        order = sorted(settings.backends, key=ALL_BACKENDS.index) if matrix_sizes else []
        if not matrix_sizes:
            rep["notes"].append("no square size up to the model's max_res: the backend matrix did not run")
        ok_torch, torch_reason = availability("torch-fp32", checkpoint, manifest)
        if "torch-fp32" not in order and ok_torch:
            log("torch-fp32 reference (fidelity only)")
            ref = run_worker({**base, "backend": "torch-fp32", "resolutions": [],
                              "fidelity_out": str(work / "reference.npz")}, work, settings.worker_timeout_s)
            ref_file = ref.get("fidelity", {}) and ref["fidelity"]["file"]
        for name in order:
            ok, reason = availability(name, checkpoint, manifest)
            if not ok:
                log(f"{name}: skipped ({reason})")
                results[name] = {"backend": name, "status": "skipped", "reason": reason}
                continue
            log(f"{name}: measuring")
            spec = {**base, "backend": name, "fidelity_out": str(work / f"{name}.npz")}
            results[name] = run_worker(spec, work, settings.worker_timeout_s)
            status = results[name]["status"]
            log(f"{name}: {status}" + (f" ({results[name].get('error')})" if status != "ok" else ""))
            if name == "torch-fp32" and status == "ok" and results[name].get("fidelity"):
                ref_file = results[name]["fidelity"]["file"]
        for entry in results.values():
            if entry["status"] != "ok":
                continue
            if ref_file and entry.get("fidelity"):
                entry["fidelity_vs_torch_fp32"] = fidelity.compare(ref_file, entry["fidelity"]["file"])
                rep["fidelity_pairs"] = entry["fidelity_vs_torch_fp32"]["pairs"]
            else:
                entry["fidelity_vs_torch_fp32"] = None
                entry.setdefault("errors", []).append(
                    "fidelity: no torch FP32 reference" + ("" if ok_torch else f" ({torch_reason})"))
        if row_sizes:
            from .resolution_rows import measure_rows

            rep["resolution_rows"] = {"sizes": [list(wh) for wh in row_sizes], "naive_tile": settings.naive_tile,
                                      "rows": measure_rows(settings.model_dir, row_sizes, work, settings.naive_tile,
                                                           timeout_s=settings.worker_timeout_s, log=log)}
    rep["backends"] = results
    rep["peaks"] = _peaks(settings, results)
    for entry in results.values():
        if entry["status"] == "ok":
            add_roofline(entry, rep["flops"], rep["peaks"])
            add_overheads(entry)
    rep["targets"] = targets.compute_targets(results)
    rep["load_average"]["end"] = hardware.load_average()
    return write_report(rep, out_dir, settings.report_name)


def write_report(rep: dict, out_dir: Path, stem: str = "bench") -> dict:
    """Write ``rep`` as ``<stem>.json``, ``<stem>.md`` and two PNG plots into ``out_dir`` (each file
    atomically); records the file names in ``rep['files']`` and returns ``rep``.
    """
    files = {"json": f"{stem}.json", "markdown": f"{stem}.md",
             "plots": {"throughput": f"{stem}_throughput.png", "breakdown": f"{stem}_breakdown.png"}}
    rep["files"] = files
    plots.throughput_plot(rep, out_dir / files["plots"]["throughput"])
    plots.breakdown_plot(rep, out_dir / files["plots"]["breakdown"])
    report.write_markdown(rep, out_dir / files["markdown"])
    report.write_json(rep, out_dir / files["json"])
    return rep
