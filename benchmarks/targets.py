"""The issue's §4 targets as ratios computed from one report (never a timed test)."""
from __future__ import annotations

GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


def find_run(result: dict | None, res: int, batch: int, mode: str) -> dict | None:
    """The end-to-end run of ``result`` at (``res``, ``batch``, cache ``mode``), or ``None``."""
    for run in (result or {}).get("runs", []):
        if run["resolution"] == res and run["batch"] == batch and run["style_cache"] == mode:
            return run
    return None


def find_graphs(result: dict | None, res: int, batch: int) -> dict | None:
    """The per-graph timings of ``result`` at (``res``, ``batch``), or ``None``."""
    for entry in (result or {}).get("graphs", []):
        if entry["resolution"] == res and entry["batch"] == batch:
            return entry["graphs"]
    return None


def overhead(result: dict | None, res: int, batch: int, mode: str, stat: str = "min_ms") -> dict | None:
    """Runtime overhead: end-to-end time minus the graphs that pipeline runs, relative to them."""
    run, graphs = find_run(result, res, batch, mode), find_graphs(result, res, batch)
    if run is None or graphs is None:
        return None
    parts = [g for g in GRAPHS if not (mode == "on" and g == "style_encoder")]
    graph_ms = sum(graphs[g][stat] for g in parts)
    e2e_ms = run["e2e"][stat]
    return {"e2e_ms": e2e_ms, "graph_ms": graph_ms, "overhead_ms": e2e_ms - graph_ms,
            "overhead_pct": 100.0 * (e2e_ms - graph_ms) / graph_ms,
            "pre_post_ms": graphs.get("pre_post", {}).get(stat), "stat": stat}


def _target(name, threshold, unit, value, reason="", note=""):
    if value is None:
        return {"target": name, "threshold": threshold, "unit": unit, "value": None, "status": "n/a",
                "note": reason}
    if threshold is None:   # reported, not judged
        return {"target": name, "threshold": None, "unit": unit, "value": value, "status": "reported",
                "note": note}
    ok = value <= threshold if unit == "% (max)" else value >= threshold
    return {"target": name, "threshold": threshold, "unit": unit, "value": value,
            "status": "pass" if ok else "miss", "note": note}


def _speedup(fast: dict | None, slow: dict | None, label: str):
    if fast is None or slow is None:
        return None, f"needs {label} measured"
    return slow["e2e"]["p50_ms"] / fast["e2e"]["p50_ms"], (
        f"p50 {slow['e2e']['p50_ms']:.1f} / {fast['e2e']['p50_ms']:.1f} ms; "
        f"by min {slow['e2e']['min_ms'] / fast['e2e']['min_ms']:.2f}x")


def compute_targets(backends: dict) -> list[dict]:
    """backends: {name: worker result (with 'fidelity' filled by the orchestrator) or skip record}."""
    torch32, ort = backends.get("torch-fp32"), backends.get("ort-cpu")
    on_cpu = (torch32 or {}).get("info", {}).get("device") == "cpu"
    targets = []

    t_run = find_run(torch32, 256, 1, "off") if on_cpu else None
    value, note = _speedup(find_run(ort, 256, 1, "off"), t_run,
                           "ort-cpu and torch-fp32 on CPU at 256², batch 1, style cache off")
    targets.append(_target("CPU 256² b1: ONNX Runtime end-to-end vs torch eager FP32", 1.7, "x",
                           value, note if value is None else "", note if value is not None else ""))
    value, note = _speedup(find_run(ort, 256, 1, "on"), t_run,
                           "ort-cpu (style cache on) and torch-fp32 (off) on CPU at 256², batch 1")
    targets.append(_target("CPU 256² b1: ONNX Runtime cached style vs torch eager FP32 uncached", 2.2, "x",
                           value, note if value is None else "", note if value is not None else ""))
    ov = overhead(ort, 256, 1, "off")
    targets.append(_target("CPU 256² b1: ONNX Runtime overhead (pre/post, copies) of graph time", 5.0, "% (max)",
                           None if ov is None else ov["overhead_pct"],
                           "needs ort-cpu at 256², batch 1, cache off, with the graph breakdown",
                           "" if ov is None else (f"e2e {ov['e2e_ms']:.1f} ms - graphs {ov['graph_ms']:.1f} ms "
                                                  f"(min over iterations); pre/post alone "
                                                  f"{ov['pre_post_ms'] or 0:.2f} ms")))

    trt, t16 = backends.get("tensorrt-fp16"), backends.get("torch-fp16")
    trt_run = find_run(trt, 256, 32, "off")
    gpu_t32 = find_run(torch32, 256, 32, "off") if not on_cpu else None
    for name, slow, thr, label in (
            ("GPU 256² b32: TensorRT FP16 vs torch eager FP32", gpu_t32, 5.0,
             "tensorrt-fp16 and torch-fp32 on GPU at 256², batch 32"),
            ("GPU 256² b32: TensorRT FP16 vs torch FP16", find_run(t16, 256, 32, "off"), 1.5,
             "tensorrt-fp16 and torch-fp16 at 256², batch 32")):
        value, note = _speedup(trt_run, slow, label)
        targets.append(_target(name, thr, "x", value, note if value is None else "", note if value is not None else ""))
    fid = (trt or {}).get("fidelity_vs_torch_fp32") or {}
    targets.append(_target("GPU: TensorRT FP16 token agreement vs torch FP32", 99.0, "%",
                           fid.get("token_agreement_pct"), "needs tensorrt-fp16 fidelity"))
    targets.append(_target("GPU: TensorRT FP16 PSNR vs torch FP32", 30.0, "dB", fid.get("psnr_db"),
                           "needs tensorrt-fp16 fidelity"))
    targets.extend(cpu_bf16_targets(backends, t_run))
    return targets


def _skipped_for_bf16(entry: dict | None) -> str | None:
    """The skip reason of an OpenVINO BF16 row when the CPU has no BF16 units, else None."""
    if entry and entry.get("status") == "skipped" and "BF16" in (entry.get("reason") or ""):
        return entry["reason"]
    return None


def _graph_ratio(fast: dict | None, slow: dict | None, graph: str, label: str):
    f, s = find_graphs(fast, 256, 1), find_graphs(slow, 256, 1)
    if not f or not s or graph not in f or graph not in s:
        return None, f"needs {label} with the graph breakdown at 256², batch 1"
    return s[graph]["min_ms"] / f[graph]["min_ms"], f"min {s[graph]['min_ms']:.1f} / {f[graph]['min_ms']:.1f} ms"


def cpu_bf16_targets(backends: dict, torch_run: dict | None) -> list[dict]:
    """The CPU BF16 targets of the OpenVINO issue (256², batch 1, against torch eager FP32 on the CPU).

    Where the CPU has no BF16 units (the BF16 rows were skipped for that reason) these are n/a with
    that reason, and the OpenVINO FP32 row is judged against the FP32 targets instead.
    """
    plan, bf16, ov32 = backends.get("openvino-plan"), backends.get("openvino-bf16"), backends.get("openvino-fp32")
    ort = backends.get("ort-cpu")
    no_bf16 = _skipped_for_bf16(plan) or _skipped_for_bf16(bf16)
    out = []
    if no_bf16:
        for name, thr, mode in (("CPU 256² b1 (no BF16 units): OpenVINO FP32 vs torch eager FP32", 1.7, "off"),
                                ("CPU 256² b1 (no BF16 units): OpenVINO FP32 cached style vs torch eager FP32",
                                 2.2, "on")):
            value, note = _speedup(find_run(ov32, 256, 1, mode), torch_run, "openvino-fp32 and torch-fp32 on CPU")
            out.append(_target(name, thr, "x", value, note if value is None else "", note if value else ""))
        out.append(_target("CPU BF16 targets", None, "", None, f"not judged: {no_bf16}"))
        return out + int8_and_throughput(backends, torch_run)
    rows = (
        ("CPU 256² b1: verified plan (OpenVINO) vs torch eager FP32, style not cached", 2.0, plan, "off",
         "openvino-plan"),
        ("CPU 256² b1: verified plan (OpenVINO) cached style vs torch eager FP32", 3.0, plan, "on", "openvino-plan"),
        ("CPU 256² b1: all-BF16 plan (OpenVINO, forced) vs torch eager FP32, not cached", 3.5, bf16, "off",
         "openvino-bf16"),
        ("CPU 256² b1: all-BF16 plan (OpenVINO, forced) cached style vs torch eager FP32", 5.0, bf16, "on",
         "openvino-bf16"),
    )
    for name, thr, entry, mode, label in rows:
        value, note = _speedup(find_run(entry, 256, 1, mode), torch_run,
                               f"{label} (style cache {mode}) and torch-fp32 on CPU at 256², batch 1")
        out.append(_target(name, thr, "x", value, note if value is None else "", note if value is not None else ""))
    value, note = _graph_ratio(bf16, ort, "decoder", "openvino-bf16 and ort-cpu")
    out.append(_target("CPU 256² b1: OpenVINO BF16 decoder vs ONNX Runtime FP32 decoder", 3.5, "x", value,
                       note if value is None else "", note if value is not None else ""))
    out.extend(int8_and_throughput(backends, torch_run))
    for label, entry in (("verified plan", plan), ("all-BF16 plan (reported)", bf16)):
        # judged with the 256² rows it belongs to
        fid = ((entry or {}).get("fidelity_vs_torch_fp32") or {}) if find_run(entry, 256, 1, "off") else {}
        threshold = 30.0 if label == "verified plan" else None
        out.append(_target(f"CPU: OpenVINO {label} PSNR vs torch FP32", threshold, "dB", fid.get("psnr_db"),
                           "needs fidelity of the row",
                           f"tokens {fid['token_agreement_pct']:.2f} %" if fid.get("token_agreement_pct") else ""))
    return out


THROUGHPUT_ROWS = ("ort-cpu", "openvino-fp32", "openvino-bf16", "openvino-plan", "openvino-int8")


def int8_and_throughput(backends: dict, torch_run: dict | None) -> list[dict]:
    """Reported (not judged) CPU rows: OpenVINO INT8 end to end vs torch eager FP32 at 256², batch 1
    (with its fidelity), and the 512² batch-1 and 256² batch-8 throughput (img/s, style not cached) of
    every CPU runtime row measured there."""
    int8 = backends.get("openvino-int8")
    out = []
    value, note = _speedup(find_run(int8, 256, 1, "off"), torch_run,
                           "openvino-int8 and torch-fp32 on CPU at 256², batch 1, style cache off")
    fid = (int8 or {}).get("fidelity_vs_torch_fp32") or {}
    if value is not None and fid.get("psnr_db") is not None:
        note += f"; {fid['psnr_db']:.2f} dB, tokens {fid['token_agreement_pct']:.2f} % vs torch FP32"
    reason = (int8 or {}).get("reason") or note
    out.append(_target("CPU 256² b1: OpenVINO INT8 (the model directory's INT8 IR) vs torch eager FP32, not cached",
                       None, "x", value, reason if value is None else "", note if value is not None else ""))
    for res, batch in ((512, 1), (256, 8)):
        rates = {}
        for name in THROUGHPUT_ROWS:
            run = find_run(backends.get(name), res, batch, "off")
            if run is not None:
                rates[name] = run["e2e"]["images_per_s"]
        best = max(rates, key=rates.get) if rates else None
        note = ", ".join(f"{n} {r:.3f}" for n, r in rates.items()) + (f" img/s (best: {best})" if best else "")
        out.append(_target(f"CPU {res}² b{batch}: throughput, style not cached (best CPU runtime row)", None,
                           "img/s", rates.get(best) if best else None,
                           f"needs CPU runtime rows at {res}², batch {batch}", note))
    return out
