"""Is ``backend="auto"``'s pick the fastest? Its first-use measurement against ``quantart bench``, side by side.

    python -m quantart_benchmarks.auto_check --model DIR --out benchmarks/results/auto_choice_NAME

1. ``choose_backend(DIR, "auto")`` with an empty choice cache (a temporary ``QUANTART_CACHE_DIR``; the
   verified plans are looked up or verified as on a user's first use): its pick, every candidate's
   timing and the reason.
2. ``quantart bench`` on the same candidates (``ort-cpu``, ``openvino-plan`` and, where the export holds
   INT8 IR, ``openvino-int8-mixed``) at auto's serving size, batch 1, style cached (what auto times),
   each backend in its own process.
3. The verdict: auto's pick against the bench's fastest p50, and the gap between the two.

Writes ``<out>.json`` and ``<out>.md`` (the bench's own report beside them as ``<out>_bench.*``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench_name(candidate: dict) -> str:
    """The ``quantart bench`` backend that runs a timing candidate (``timing.Candidate`` as a dict)."""
    if candidate["backend"] == "onnxruntime":
        return "ort-cpu"
    return "openvino-int8-mixed" if "int8" in candidate["precision"] else "openvino-plan"


def auto_choice(model_dir: str) -> dict:
    """auto's pick on a first use (fresh choice cache): backend, precision, reason, candidates' seconds."""
    from quantart_runtime.backends import choose_backend
    from quantart_runtime.timing import RUNS

    t0 = time.perf_counter()
    choice = choose_backend(model_dir, "auto")
    return {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason, "runs": RUNS,
            "size": choice.timed_size,
            "seconds_to_choose": time.perf_counter() - t0,
            "candidates": [{"backend": c.backend, "precision": c.precision, "seconds": c.seconds,
                            "bench": bench_name({"backend": c.backend, "precision": c.precision})}
                           for c in (choice.timings or [])]}


def main(argv=None) -> int:
    """Run the check (see the module docstring); exit 0 whether or not auto picked the fastest."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="quantart-auto-check-")
    os.environ["QUANTART_CACHE_DIR"] = cache
    auto = auto_choice(args.model)
    print(json.dumps(auto, indent=1), flush=True)
    if len(auto["candidates"]) < 2:
        raise SystemExit(f"auto had {len(auto['candidates'])} candidate(s) here: {auto['reason']}")
    size = int(auto["size"].split("x")[0])
    backends = ",".join(c["bench"] for c in auto["candidates"])
    cmd = [sys.executable, "-m", "quantart_benchmarks.cli", "--model", args.model, "--backends", backends,
           "--resolutions", str(size), "--batch-sizes", "1", "--style-cache", "on", "--warmup", "1",
           "--iters", str(args.iters), "--no-breakdown", "--out", str(out.parent), "--name", out.name + "_bench"]
    subprocess.run(cmd, check=True, env={**os.environ, "QUANTART_CACHE_DIR": cache}, stdout=subprocess.DEVNULL)
    bench = json.loads((out.parent / f"{out.name}_bench.json").read_text())
    p50 = {}
    for name, b in bench["backends"].items():
        for r in b.get("runs", []) if b.get("status") == "ok" else []:
            if r["batch"] == 1 and r["style_cache"] == "on":
                p50[name] = r["e2e"]["p50_ms"] / 1e3
    picked = bench_name({"backend": auto["backend"], "precision": auto["precision"]})
    fastest = min(p50, key=p50.get) if p50 else None
    record = {"model": args.model, "size": size, "auto": auto, "bench_p50_s": p50, "auto_pick": picked,
              "bench_fastest": fastest, "agree": picked == fastest}
    (out.with_suffix(".json")).write_text(json.dumps(record, indent=1))
    rows = [f"| candidate | auto's timing (min of {auto['runs']}) | bench p50 (batch 1, cached style) |",
            "|---|---|---|"]
    for c in auto["candidates"]:
        b = p50.get(c["bench"])
        rows.append(f"| {c['backend']} {c['precision']} (`{c['bench']}`) | {c['seconds'] * 1e3:.0f} ms | "
                    + (f"{b * 1e3:.0f} ms" if b is not None else "–") + " |")
    verdict = (f"auto picked `{picked}`; the bench's fastest is `{fastest}`: "
               + ("**agree**" if record["agree"] else "**disagree**"))
    (out.with_suffix(".md")).write_text("\n".join([f"# auto vs bench — {args.model} at {size}²", "", *rows, "",
                                                   verdict, ""]))
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
