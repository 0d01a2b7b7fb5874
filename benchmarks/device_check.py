"""GPU check of the fused nearest-code kernel and the device memory path. Run via benchmarks/device_check.sh.

Runs on a lent GPU machine with torch, triton, cuda-python and cupy (no TensorRT, no network, no
Pillow), in at most 8 minutes. Sections, each guarded (a failure is recorded and the rest still
run) and each followed by a rewrite of device_check.json and device_check.md (format:
docs/device_check.md):

  setup        versions, device, driver, PTX ISAs (written before anything can fail);
  correctness  the Triton kernel vs the float64 oracle, N x K x D x {fp32, fp16};
  aot          the PTX the TensorRT plugin embeds, for this driver (ISA capped by Triton's ptxas),
               loaded with cuModuleLoadData and launched with the plugin's launch parameters;
  timing       fused kernel vs torch matmul+argmin (+gather), FP32 without TF32 and FP16; decides
               the kernel target: fused >= 2x torch at N >= 8192;
  memory       the GPU runners' device path (cuda_mem): pinned staging, one upload, on-device
               broadcast of a style code, stream-ordered allocation, one download;
  runner       TensorRTRunner's data path without TensorRT (``start_memory``): a multi-batch run
               with a prefetching worker thread, on device 0 and the last device; the pool's release
               threshold; shared context memory; arrays and pool memory freed by deactivate;
  pipeline     the torch eager pipeline of the official architecture (needs the quantart package).

The kernel and cuda_mem modules are loaded from their files, not through the quantart_runtime
package (whose images module needs Pillow).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("correctness", "aot", "timing", "memory", "runner", "pipeline")
NS = (1, 17, 1000, 8192, 65536)
KS = (512, 1024, 16384)
DS = (64, 256, 512)
TIMING_NS = (1024, 8192, 16384, 65536)
TARGET_SPEEDUP, TARGET_MIN_N = 2.0, 8192


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what} needs positive integers, got {text!r}")
    return values


def parser() -> argparse.ArgumentParser:
    """The command line (also used by device_check.sh to resolve OUT_DIR before anything runs)."""
    p = argparse.ArgumentParser(prog="device_check", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", nargs="?", help="output directory (or --out; default $OUT)")
    p.add_argument("--out", help="output directory for device_check.json / device_check.md")
    p.add_argument("--budget-s", type=float, default=400.0, help="stop starting sections after this (s)")
    p.add_argument("--ns", type=lambda t: _ints(t, "--ns"), default=list(NS), help="N values (correctness)")
    p.add_argument("--ks", type=lambda t: _ints(t, "--ks"), default=list(KS), help="K values")
    p.add_argument("--ds", type=lambda t: _ints(t, "--ds"), default=list(DS), help="D values")
    p.add_argument("--timing-ns", type=lambda t: _ints(t, "--timing-ns"), default=list(TIMING_NS),
                   help="N values (timing)")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    p.add_argument("--resolve-out", action="store_true", help="print the absolute output directory and exit")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse ``argv``; ``out`` becomes an absolute Path (from OUT_DIR, --out or $OUT). Exit 2 on errors."""
    p = parser()
    a = p.parse_args(argv)
    if a.out_dir and a.out and Path(a.out_dir).resolve() != Path(a.out).resolve():
        p.error(f"two output directories given: {a.out_dir} and --out {a.out}")
    out = a.out or a.out_dir or os.environ.get("OUT")
    if not out:
        p.error("give an output directory (OUT_DIR, --out or $OUT)")
    a.out = Path(out).resolve()
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    unknown = a.skip - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) in --skip: {', '.join(sorted(unknown))} (sections: {', '.join(SECTIONS)})")
    return a


def load_module(name: str, relpath: str):
    """Import one self-contained source file of the tree by path (no package __init__ runs)."""
    full = f"quantart_device_check_{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module          # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


# The project's one-line error formatter, loaded from its file (it needs nothing but the stdlib).
one_line = load_module("errors", "runtime/util/errors.py").one_line


def load_kernel():
    """runtime/kernels/nearest_code.py (numpy only until a Triton function is called)."""
    return load_module("nearest_code", "runtime/kernels/nearest_code.py")


def load_runtime_module(dotted: str):
    """A module of the runtime package (e.g. "backends.tensorrt") without running the package's
    __init__ (which imports the Stylizer and Pillow): the package is registered as a bare namespace."""
    import types

    if "quantart_runtime" not in sys.modules:
        pkg = types.ModuleType("quantart_runtime")
        pkg.__path__ = [str(ROOT / "runtime")]
        sys.modules["quantart_runtime"] = pkg
    return importlib.import_module(f"quantart_runtime.{dotted}")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def setup(res: dict) -> bool:
    """Record versions and the device; True when a CUDA device is usable by torch."""
    res["versions"] = {d: _version(d) for d in ("torch", "triton", "cuda-python", "cuda-bindings", "cupy-cuda12x",
                                                  "cupy-cuda13x", "onnxruntime", "onnxruntime-gpu", "numpy",
                                                  "pillow", "tensorrt")}
    res["python"] = platform.python_version()
    nc = load_kernel()
    import torch

    if not torch.cuda.is_available():
        res["errors"]["setup"] = "no CUDA device visible to torch"
        return False
    major, minor = torch.cuda.get_device_capability()
    res["device"] = {"name": torch.cuda.get_device_name(), "arch": major * 10 + minor,
                     "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                     "torch_cuda": torch.version.cuda}
    try:
        from cuda.bindings import driver as cu

        err, driver = cu.cuDriverGetVersion()
        res["device"]["driver_version"] = int(driver)
        res["device"]["driver_ptx_isa"] = nc.driver_ptx_version(driver)
        res["device"]["ptxas_ptx_isa"] = nc.ptxas_ptx_version(major * 10 + minor)
        res["device"]["plugin_ptx_isa"] = nc.ptx_version_for_driver(driver, major * 10 + minor)
    except Exception as exc:     # recorded; the aot section reports it again
        res["errors"]["setup"] = f"driver/PTX query failed: {one_line(exc, with_type=True)}"
    return True


def run_sections(args, res: dict, sections: dict, write, clock=time.monotonic) -> None:
    """Run ``sections`` ({name: fn()}) in order within the time budget, recording errors and
    rewriting the report after each one."""
    t0 = clock()
    for name, fn in sections.items():
        if name in args.skip:
            res["skipped"][name] = "--skip"
            continue
        if clock() - t0 > args.budget_s:
            res["skipped"][name] = f"time budget of {args.budget_s:.0f} s used up"
            write(res)
            continue
        s0 = clock()
        try:
            fn()
        except Exception as exc:
            res["errors"][name] = one_line(exc, limit=500, with_type=True)
            load_module("atomic", "runtime/util/atomic.py").write_text(args.out / f"{name}.traceback.txt",
                                                                       traceback.format_exc())
        res["section_s"][name] = round(clock() - s0, 1)
        res["wall_s"] = round(clock() - t0, 1)
        res["target"] = target_verdict(res)
        write(res)
        print(f"device_check: {name} done in {clock() - s0:.0f} s", flush=True)


def target_verdict(res: dict) -> dict | None:
    """Per dtype: whether the fused kernel is >= 2x torch matmul+argmin at every N >= 8192 timed,
    with the smallest speed-up, and the resulting kernel target ("fused" or "torch")."""
    rows = [r for r in res.get("timing", []) if r["N"] >= TARGET_MIN_N and "speedup" in r]
    if not rows:
        return None
    out = {}
    for dt in sorted({r["dtype"] for r in rows}):
        mine = [r for r in rows if r["dtype"] == dt]
        met = all(r["speedup"] >= TARGET_SPEEDUP for r in mine)
        out[dt] = {"met": met, "min_speedup": round(min(r["speedup"] for r in mine), 2), "cases": len(mine),
                   "kernel_target": "fused" if met else "torch"}
    return out


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(res: dict) -> str:
    """The Markdown report (docs/device_check.md describes it) of a result dict."""
    dev = res.get("device") or {}
    out = ["# Device check: fused nearest-code kernel and device memory path", "",
           f"- device: {dev.get('name', 'none')} (sm_{dev.get('arch', '?')}, {dev.get('memory_gib', '?')} GiB), "
           f"driver {dev.get('driver_version', '?')}, PTX ISA driver {dev.get('driver_ptx_isa', '?')} / "
           f"ptxas {dev.get('ptxas_ptx_isa', '?')} -> plugin {dev.get('plugin_ptx_isa', '?')}",
           f"- versions: {json.dumps({k: v for k, v in (res.get('versions') or {}).items() if v})}",
           f"- started {res.get('started', '?')}, wall {res.get('wall_s', 0)} s, "
           f"sections {json.dumps(res.get('section_s', {}))}",
           ""]
    if res.get("correctness"):
        bad = [r for r in res["correctness"] if not r["ok"]]
        out += ["## Correctness vs float64 oracle", "",
                f"{len(res['correctness']) - len(bad)}/{len(res['correctness'])} cases pass "
                "(indices equal on decisive rows, codes bitwise equal to the chosen rows).", "",
                "| dtype | N | K | D | decisive | mismatches | codes exact | ok |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['N']} | {r['K']} | {r['D']} | {r['decisive']} | {r['mismatch']} | "
                f"{r['codes_exact']} | {r['ok']} |" for r in (bad or res["correctness"])[:60]]
    if res.get("aot"):
        out += ["", "## AOT PTX through cuda-python (plugin launch parameters)", "",
                "| dtype | D | N | K | PTX ISA | block/smem | indices = JIT | codes = JIT | ok |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['D']} | {r['N']} | {r['K']} | {r['ptx_version']} | "
                f"{r['threads_per_block']}/{r['shared_mem']} | {r['indices_equal_jit']} | {r['codes_equal_jit']} | "
                f"{r['ok']} |" for r in res["aot"]]
    if res.get("timing"):
        out += ["", "## Timing (ms, median of triton.testing.do_bench)", "",
                "| dtype | N | K | D | fused | torch matmul+argmin | speed-up | same indices |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['N']} | {r['K']} | {r['D']} | {_fmt(r.get('fused_ms'))} | "
                f"{_fmt(r.get('torch_ms'))} | {_fmt(r.get('speedup'), '.2f')}x | {r.get('indices_equal_torch')} |"
                for r in res["timing"]]
        out += ["", f"Kernel target (fused >= {TARGET_SPEEDUP:g}x torch at N >= {TARGET_MIN_N}): "
                f"{json.dumps(res.get('target'))}"]
    if res.get("memory"):
        out += ["", "## Device memory path (cuda_mem)", "", "| check | ok | detail |", "|---|---|---|"]
        out += [f"| {r['check']} | {r['ok']} | {r.get('detail', '')} |" for r in res["memory"]]
    if res.get("runner"):
        out += ["", "## TensorRT runner data path without TensorRT (prefetch thread, pool, context memory)", "",
                "| check | ok | detail |", "|---|---|---|"]
        out += [f"| {r['check']} | {r['ok']} | {r.get('detail', '')} |" for r in res["runner"]]
    if res.get("pipeline"):
        out += ["", "## Torch eager pipeline, official architecture, 256x256", "", "| dtype | batch | ms | images/s |",
                "|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['batch']} | {_fmt(r.get('ms'), '.1f')} | {_fmt(r.get('images_per_s'), '.1f')} |"
                if "ms" in r else f"| {r['dtype']} | {r['batch']} | error: {r['error']} | |" for r in res["pipeline"]]
    if res.get("errors") or res.get("skipped"):
        out += ["", "## Errors and skipped sections", ""]
        out += [f"- {k}: {v}" for k, v in res.get("errors", {}).items()]
        out += [f"- {k}: skipped ({v})" for k, v in res.get("skipped", {}).items()]
    return "\n".join(out) + "\n"


def write_report(out: Path, res: dict) -> None:
    """Write device_check.json and device_check.md under ``out``, each atomically
    (``quantart_runtime.util.atomic``, loaded from its file: no Pillow needed)."""
    atomic = load_module("atomic", "runtime/util/atomic.py")
    atomic.write_text(out / "device_check.json", json.dumps(res, indent=1, default=str))
    atomic.write_text(out / "device_check.md", markdown(res))


def main(argv=None) -> int:
    """Run the check; exit 0 when every correctness and AOT case passed, 1 otherwise, 2 without a GPU."""
    args = parse_args(argv)
    if args.resolve_out:
        print(args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    res = {"format": 1, "argv": list(sys.argv[1:] if argv is None else argv), "errors": {}, "skipped": {},
           "section_s": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def write(r):
        write_report(args.out, r)

    try:
        ok = setup(res)
    except Exception as exc:
        res["errors"]["setup"] = one_line(exc, limit=500, with_type=True)
        ok = False
    write(res)
    if not ok:
        print(f"device_check: {res['errors']['setup']}", file=sys.stderr)
        return 2
    import torch

    sec = load_module("sections", "benchmarks/device_check_sections.py")

    nc = load_kernel()
    sections = {"correctness": lambda: sec.correctness(torch, nc, args, res),
                "aot": lambda: sec.aot(torch, nc, args, res),
                "timing": lambda: sec.timing(torch, nc, args, res),
                "memory": lambda: sec.memory(torch, load_module("cuda_mem", "runtime/backends/cuda_mem.py"), res),
                "runner": lambda: sec.runner_memory(torch, load_runtime_module("backends.cuda_mem"),
                                                    load_runtime_module("backends.tensorrt").TensorRTRunner, res),
                "pipeline": lambda: sec.pipeline(torch, res, one_line)}
    run_sections(args, res, sections, write)
    ok = all(r["ok"] for r in res.get("correctness", [])) and all(r["ok"] for r in res.get("aot", [])) \
        and all(r["ok"] for r in res.get("memory", [])) and all(r["ok"] for r in res.get("runner", []))
    print((args.out / "device_check.md").read_text())
    return 0 if ok and not {"correctness", "aot", "memory", "runner"} & set(res["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
