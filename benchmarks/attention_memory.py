"""Peak memory of one stylization against the memory estimate, with and without fused attention.

    python -m quantart_benchmarks.attention_memory --model DIR [--sizes 96,128,192,256] [--style-size 32]
        [--modes fused,standard] [--threads 1] [--out benchmarks/results/attention_memory_tiny.json]

Each (size, mode) runs in a fresh process: ONNX Runtime CPU, the model loaded and a style encoded,
then one content of size² stylized; the peak RSS over what the process held before that call
(``ru_maxrss``) is compared with ``quantart_runtime.memory``'s estimate for the same request
(``Geometry.peak_bytes``, fused or not). ``--rlimit-headroom`` additionally runs the call under
``RLIMIT_AS`` = the process's mapped size + the headroom, so a mode that needs more fails instead of
swapping (reported as ``failed``, with the error).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from quantart_runtime import Stylizer
    from quantart_runtime.memory import _vm_size
    from quantart_runtime.util import one_line

    model, size, style_size, fused, threads, headroom = sys.argv[1:7]
    size, style_size, threads, headroom = int(size), int(style_size), int(threads), int(headroom)
    st = Stylizer.load(model, backend="onnxruntime", providers=["CPUExecutionProvider"],
                       intra_op_threads=threads, fused_attention=fused == "fused")
    rng = np.random.default_rng(0)
    code = st.encode_style(rng.integers(0, 256, (style_size, style_size, 3), dtype=np.uint8), size=style_size)
    tokens = int(np.prod(code.latent.shape[2:]))
    st.set_memory_budget(1 << 50)                 # measure what the call takes, never refuse it here
    geo = st.size_policy.geometry
    content = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if headroom:
        limit = _vm_size() + headroom
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {"size": size, "mode": fused, "fused_graphs": sorted(st.runner.fused_graphs),
           "linear_attention": st.runner.linear_attention,
           "estimate_mb": geo.peak_bytes(size, size, 1, tokens) / 2**20, "style_tokens": tokens}
    t0 = time.perf_counter()
    try:
        st.stylize(content, code)
        out["status"] = "ok"
    except Exception as exc:   # an allocation refused under the limit
        out["status"], out["error"] = "failed", one_line(exc)[:200]
    out["seconds"] = time.perf_counter() - t0
    out["peak_over_loaded_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base) / 2**20
    print(json.dumps(out))
""")


def measure(model_dir, size: int, mode: str, style_size: int = 32, threads: int = 1, headroom: int = 0,
            timeout: float = 1800) -> dict:
    """One (size, mode) measurement in a fresh process; ``mode``: "fused" or "standard"."""
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model_dir), str(size), str(style_size), mode,
                           str(threads), str(headroom)], capture_output=True, text=True, timeout=timeout)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or "").strip().splitlines()
        return {"size": size, "mode": mode, "status": "failed",
                "error": f"exit {done.returncode}: {tail[-1] if tail else 'no output'}"}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """The measurements as a Markdown table."""
    out = ["| size | attention | peak RSS over loaded (MB) | estimate (MB) | time (s) | status |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['size']}² | {r['mode']} | {r.get('peak_over_loaded_mb', float('nan')):.0f} | "
                   f"{r.get('estimate_mb', float('nan')):.0f} | {r.get('seconds', float('nan')):.1f} | "
                   f"{r['status']}{' (' + r['error'] + ')' if r.get('error') else ''} |")
    return "\n".join(out)


def main(argv=None) -> int:
    """The command line (module docstring); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--sizes", default="96,128,192,256")
    ap.add_argument("--modes", default="fused,standard")
    ap.add_argument("--style-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rlimit-headroom", default="0", help="bytes, e.g. 2G (0: no limit)")
    ap.add_argument("--out", default=None, help="JSON file for the rows (and a .md beside it)")
    args = ap.parse_args(argv)
    from quantart_runtime.memory import parse_budget
    from quantart_runtime.util.atomic import write_text

    headroom = 0 if args.rlimit_headroom in ("0", "") else parse_budget(args.rlimit_headroom)
    rows = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            rows.append(measure(args.model, size, mode, args.style_size, args.threads, headroom))
            print(json.dumps(rows[-1]), file=sys.stderr)
    md = table(rows)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps({"model": str(args.model), "style_size": args.style_size,
                                    "threads": args.threads, "rlimit_headroom": headroom, "rows": rows}, indent=1))
        from datetime import datetime, timezone

        import onnxruntime

        command = " ".join(argv if argv is not None else sys.argv[1:])
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        header = (f"# Peak memory of one stylization vs the estimate: fused vs standard attention\n\n"
                  f"`python -m quantart_benchmarks.attention_memory {command}`"
                  f" ({day}; ONNX Runtime {onnxruntime.__version__} CPU, {args.threads} "
                  f"intra-op thread(s), the runner's shared CPU arena; style {args.style_size}²; each row a fresh "
                  f"process{f' under RLIMIT_AS = its mapped size + {headroom / 2**30:g} GiB' if headroom else ''}; "
                  f"failed = the allocation refused under the limit; timings are indicative on a shared machine).\n\n")
        write_text(out.with_suffix(".md"), header + md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
