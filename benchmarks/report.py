"""The report: JSON (everything, with hardware and software versions) and a Markdown summary in
the spirit of `yolo benchmark` (one row per backend × resolution × batch × style cache)."""
from __future__ import annotations

import json

from quantart_runtime.util.atomic import write_text

BACKEND_ORDER = ("torch-fp32", "torch-fp16", "torch-bf16", "torch-compile", "ort-cpu", "ort-cuda", "ort-trt",
                 "tensorrt-fp16", "openvino-fp32", "openvino-bf16", "openvino-plan", "openvino-int8",
                 "openvino-int8-mixed")
PARTS = ("content_encoder", "style_encoder", "sga", "decoder", "pre_post")
PART_LABELS = {"content_encoder": "content enc", "style_encoder": "style enc", "sga": "SGA",
               "decoder": "decoder", "pre_post": "pre/post"}


def write_json(report: dict, path) -> None:
    """Write ``report`` as JSON to ``path`` atomically. Raises ``OSError``."""
    write_text(path, json.dumps(report, indent=1, sort_keys=False) + "\n")


def _f(value, fmt: str = ".1f", empty: str = "–") -> str:
    return empty if value is None else format(value, fmt)


def _status(entry: dict) -> str:
    if entry["status"] == "ok":
        return "✅"
    if entry["status"] == "skipped":
        return "❎ skipped"
    return "❌ failed"


def _results_table(report: dict) -> list[str]:
    lines = ["| Backend | Status | Size | Batch | Style cache | Build (s) | p50 (ms) | p90 (ms) | img/s | "
             "Peak RSS (MiB) | ΔRSS (MiB) | Device (MiB) | PSNR (dB) | Tokens (%) | GFLOP/s | % of peak |",
             "|" + "---|" * 16]
    for name in BACKEND_ORDER:
        entry = report["backends"].get(name)
        if entry is None:
            continue
        fid = entry.get("fidelity_vs_torch_fp32") or {}
        if entry["status"] != "ok":
            why = entry.get("reason") or entry.get("error") or ""
            lines.append(f"| {name} | {_status(entry)}: {why} |" + " – |" * 14)
            continue
        roof = {(r["resolution"], r["batch"], r["style_cache"]): r for r in entry.get("roofline_e2e", [])}
        for run in entry["runs"]:
            key = (run["resolution"], run["batch"], run["style_cache"])
            rf = roof.get(key, {})
            e = run["e2e"]
            lines.append(
                f"| {name} | {_status(entry)} | {run['resolution']}² | {run['batch']} | {run['style_cache']} | "
                f"{_f(entry.get('build_s'), '.2f')} | {_f(e['p50_ms'])} | {_f(e['p90_ms'])} | "
                f"{_f(e['images_per_s'], '.2f')} | {_f(run.get('peak_rss_mb'), '.0f')} | "
                f"{_f(run.get('rss_delta_mb'), '.0f')} | {_f(run.get('device_peak_mb'), '.0f')} | "
                f"{_f(fid.get('psnr_db'), '.2f')} | {_f(fid.get('token_agreement_pct'), '.2f')} | "
                f"{_f(rf.get('gflops_per_s'), '.1f')} | {_f(rf.get('pct_of_peak'), '.1f')} |")
    return lines


def _breakdown_table(report: dict) -> list[str]:
    lines = ["| Backend | Size | Batch | " + " | ".join(PART_LABELS[p] for p in PARTS) +
             " | graphs Σ | e2e (cache off) | overhead | e2e (cache on) | overhead |",
             "|" + "---|" * (3 + len(PARTS) + 5)]
    for name in BACKEND_ORDER:
        entry = report["backends"].get(name)
        if not entry or entry["status"] != "ok":
            continue
        for g in entry.get("graphs", []):
            parts = g["graphs"]
            row = [name, f"{g['resolution']}²", str(g["batch"])]
            row += [_f(parts[p]["p50_ms"]) if p in parts else "–" for p in PARTS]
            row.append(_f(sum(parts[p]["p50_ms"] for p in PARTS[:4] if p in parts)))
            for mode in ("off", "on"):
                ov = (entry.get("overhead") or {}).get(f"{g['resolution']}/{g['batch']}/{mode}")
                row += ["–", "–"] if ov is None else [_f(ov["e2e_ms"]), f"{ov['overhead_pct']:+.1f}%"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _flops_table(report: dict) -> list[str]:
    lines = ["| Size | content enc | style enc (style 256²) | SGA | decoder | total, cache off | total, cache on |",
             "|---|---|---|---|---|---|---|"]
    for res, f in (report.get("flops") or {}).items():
        if not isinstance(f, dict) or "content_encoder" not in f:
            continue
        g = {k: v / 1e9 for k, v in f.items()}
        total = g["content_encoder"] + g["style_encoder"] + g["sga"] + g["decoder"]
        lines.append(f"| {res}² | {g['content_encoder']:.1f} | {g['style_encoder']:.1f} | {g['sga']:.2f} | "
                     f"{g['decoder']:.1f} | {total:.1f} | {total - g['style_encoder']:.1f} |")
    return lines


def _roofline_table(report: dict) -> list[str]:
    lines = ["| Backend | Size | Batch | " + " | ".join(PART_LABELS[p] for p in PARTS[:4]) + " | peak GFLOP/s |",
             "|" + "---|" * 8]
    for name in BACKEND_ORDER:
        entry = report["backends"].get(name)
        if not entry or entry["status"] != "ok":
            continue
        for r in entry.get("roofline_graphs", []):
            cells = [f"{r['graphs'][p]['gflops_per_s']:.1f} ({r['graphs'][p]['pct_of_peak']:.0f}%)"
                     if p in r["graphs"] else "–" for p in PARTS[:4]]
            lines.append(f"| {name} | {r['resolution']}² | {r['batch']} | " + " | ".join(cells) +
                         f" | {r['peak_gflops_per_s']:.1f} |")
    return lines


def _targets_table(report: dict) -> list[str]:
    lines = ["| Target (§4) | Measured | Threshold | Status | Note |", "|---|---|---|---|---|"]
    for t in report.get("targets", []):
        unit = t["unit"].replace(" (max)", "")
        thr = "–" if t["threshold"] is None else ("≤ " if "(max)" in t["unit"] else "≥ ") + f"{t['threshold']:g}{unit}"
        val = "–" if t["value"] is None else f"{t['value']:.2f}{unit}"
        mark = {"pass": "✅ pass", "miss": "❌ miss", "n/a": "n/a", "reported": "reported"}[t["status"]]
        lines.append(f"| {t['target']} | {val} | {thr} | {mark} | {t['note']} |")
    return lines


def markdown(report: dict) -> str:
    """The Markdown report: environment, targets, results, latency breakdown, FLOPs and roofline tables."""
    hw, sw, st = report["hardware"], report["software"], report["settings"]
    gpus = ", ".join(g["name"] for g in hw.get("gpus", [])) or "none"
    versions = ", ".join(f"{k} {v}" for k, v in sw.get("versions", {}).items())
    peaks = "; ".join(f"{k}: {v['flops_per_s'] / 1e9:.1f} GFLOP/s ({v['source']}"
                      + (f", {v['method']}" if v.get("method") else "") + ")"
                      for k, v in (report.get("peaks") or {}).items())
    out = [f"# QuantArt benchmark — {report['model']['kind']} model, {report['created']}", "",
           f"- Model: `{report['model']['dir']}` (checkpoint `{report['model'].get('checkpoint') or '–'}`)",
           f"- Hardware: {hw['cpu']}, {hw['usable_cpus']} usable CPUs ({hw.get('physical_cores')} physical), "
           f"{hw.get('memory_gb')} GB RAM, GPU: {gpus}",
           f"- Software: Python {sw['python']}, {versions}; torch threads {sw.get('torch_threads', '–')}; "
           f"env {sw.get('env') or '{}'}",
           f"- Settings: sizes {st['resolutions']}, batches {st['batch_sizes']}, style cache "
           f"{st['style_cache']}, style size {st['style_size']}², warm-up {st['warmup']}, iterations "
           f"{st['iters']}; each backend in its own process",
           f"- Load average (1/5/15 min) at start {report['load_average']['start']}, at end "
           f"{report['load_average']['end']} (other work on the machine inflates the timings)",
           f"- Peak FLOP/s: {peaks or '–'}", "",
           "## Targets", "", *_targets_table(report), "",
           "## Results", "",
           "Latency is per batch (p50/p90 over the timed iterations); img/s = images / mean time; "
           "peak RSS is the worker process's RSS during warm-up (ΔRSS: above the process after its imports); "
           "PSNR and tokens (SGA output codebook indices) against torch FP32 on the sample pairs "
           f"({report.get('fidelity_pairs', '–')} pairs at 256²).", "",
           *_results_table(report), "",
           "## Latency breakdown per graph (p50 ms per batch)", "",
           "The style encoder runs once per batch on one style image. Overhead = end-to-end − the graphs "
           "that path runs, over those graphs (minimum over iterations, the noise-robust estimate).", "",
           *_breakdown_table(report), "",
           "## FLOPs per graph (GFLOP, batch 1, torch.utils.flop_counter)", "", *_flops_table(report), "",
           "## Achieved GFLOP/s per graph (p50; % of the device peak)", "", *_roofline_table(report), ""]
    rows = report.get("resolution_rows")
    if rows:
        from .resolution_rows import markdown_rows

        out += ["## Large images: untiled vs streaming vs naive tiles", "",
                "ONNX Runtime (the default backend), batch 1, each mode in its own process; peak RSS over the "
                "loaded model with the style encoded (0: no higher than loading and encoding the style reached); "
                "fidelity against the untiled result where untiled fits the memory budget; naive: "
                f"diffusers-style tiled encoder/decoder ({rows['naive_tile']} px tiles, 25 % overlap, blended), "
                "the SGA on the whole latent.", "", *markdown_rows(rows["rows"]), ""]
    plots = report.get("files", {}).get("plots", {})
    if plots:
        out += ["## Plots", ""] + [f"![{k}]({v})" for k, v in plots.items()] + [""]
    notes = report.get("notes") or []
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def write_markdown(report: dict, path) -> None:
    """Write :func:`markdown` of ``report`` to ``path`` atomically. Raises ``OSError``."""
    write_text(path, markdown(report))
