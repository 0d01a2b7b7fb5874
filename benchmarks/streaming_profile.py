"""Where a streamed run spends its time: segment graphs by op, store reads/writes, statistics, the rest.

    python -m quantart_benchmarks.streaming_profile --model DIR --size 4032x3024 [--budget 10G] [--base]
        [--no-pool] [--out FILE.json]

One streamed stylization (ONNX Runtime CPU, 256² style, ``streaming="always"``) with every segment-graph
call, ``TensorStore.read`` / ``write`` / ``create`` / ``free`` and the statistics timed, and its peak RSS
above the loaded model (VmHWM); ``--base`` first times the untiled 1024² run (warmed once) in the same
process, the base of the FLOP extrapolation
(``quantart_benchmarks.streaming``); ``--no-pool`` keeps every store from reusing freed buffers for later
tensors (by default memory-bound plans reuse them within each step's room of the predicted peak, others up
to the plan's store RAM), for side-by-side comparisons.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path


def _timed(owner, name: str, key: str, acc: dict, counts: collections.Counter) -> None:
    orig = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig(*args, **kwargs)
        finally:
            acc[key] += time.perf_counter() - t0
            counts[key] += 1

    setattr(owner, name, wrapper)


def profile(model: str, height: int, width: int, budget: str | None, base: bool, pool: bool) -> dict:
    """The timed parts of one streamed run (see the module doc)."""
    from quantart_runtime import Stylizer, stream_dispatch, tensor_store
    from quantart_runtime import streaming as executor_module

    from .hardware import proc_status
    from .streaming import _photo

    st = Stylizer.load(model, backend="onnxruntime")
    if budget:
        st.set_memory_budget(budget)
    code = st.encode_style(_photo(256, 256, 1), size=256)
    untiled = None
    if base:
        img = _photo(1024, 1024, 3)
        st.stylize(img, code, streaming="never")
        t0 = time.perf_counter()
        st.stylize(img, code, streaming="never")
        untiled = time.perf_counter() - t0
    ex = stream_dispatch.executor(st)
    if not pool:   # every pool, the executor's and a memory-bound run's own: a freed buffer is never kept
        tensor_store.BufferPool.give = lambda self, flat, live_bytes: None
    runner = ex.runner()
    ops = {s["graph"]: s["op"] + ("(whole keys)" if s["whole"] else "")
           for chain in ex.section["chains"].values() for s in chain["steps"]}
    acc, counts = collections.defaultdict(float), collections.Counter()
    infer = runner.infer

    def timed_infer(graph, feeds, *args, **kwargs):
        t0 = time.perf_counter()
        out = infer(graph, feeds, *args, **kwargs)
        acc[f"graph {ops[graph]}"] += time.perf_counter() - t0
        counts[f"graph {ops[graph]}"] += 1
        return out

    runner.infer = timed_infer   # the segment runner only (the untiled runs above are not counted)
    for name in ("read", "write", "create", "free"):
        _timed(tensor_store.TensorStore, name, f"store.{name}", acc, counts)
    _timed(executor_module.StreamingExecutor, "_accumulate", "statistics", acc, counts)
    img = _photo(height, width)
    loaded = proc_status("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")   # VmHWM from here
    t0 = time.perf_counter()
    st.stylize(img, code, streaming="always")
    total = time.perf_counter() - t0
    r = st.last_run
    graphs = sum(v for k, v in acc.items() if k.startswith("graph "))
    return {"size": f"{width}x{height}", "budget_bytes": st.size_policy.budget, "store_buffer_reuse_allowed": pool,
            "total_s": total, "graphs_s": graphs, "outside_graphs_s": total - graphs, "tiles": r.tiles,
            "temp_disk_bytes": r.peak_disk_bytes, "store_ram_bytes": r.peak_store_bytes,
            "predicted_peak_bytes": r.predicted_peak_bytes, "peak_rss_over_loaded": proc_status("VmHWM:") - loaded,
            "untiled_1024_s": untiled,
            "parts_s": {k: round(v, 2) for k, v in sorted(acc.items(), key=lambda kv: -kv[1])},
            "calls": dict(counts)}


def main(argv=None) -> int:
    """The command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--size", default="4032x3024", help="WxH")
    ap.add_argument("--budget", default=None, help="memory budget (default: the runtime's)")
    ap.add_argument("--base", action="store_true", help="also time the untiled 1024² run first")
    ap.add_argument("--no-pool", action="store_true", help="no store buffer reuse in any plan")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    row = profile(args.model, height, width, args.budget, args.base, not args.no_pool)
    text = json.dumps(row, indent=1)
    if args.out:
        from quantart_runtime.util.atomic import write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
