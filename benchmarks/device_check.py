"""GPU check for the fused nearest-code kernel (issue 6 §3). Run through benchmarks/device_check.sh.

Sections (each guarded, so a failure in one is recorded and the rest still run; results are written
after every section):
  1. correctness: the Triton kernel, natively, vs the float64 oracle (N = 256 … 65536, K = 1024 and
     16384, D = 256, FP32 and FP16; the oracle runs in float64 on the GPU by row chunks and is tied
     to the numpy oracle `nearest_code_reference` on a slice);
  2. AOT: the PTX the TensorRT plugin embeds, loaded with cuModuleLoadData and launched with
     cuLaunchKernel using the plugin's launch parameters, compared with the JIT launch;
  3. timing: the fused kernel vs torch (cdist + argmin, matmul + argmin; FP32 without TF32, FP16);
  4. the torch eager pipeline of the official architecture (256², batch 1 and 32, FP32 and FP16).
Writes device_check.json and device_check.md under --out.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

NS = (256, 1024, 4096, 8192, 16384, 65536)
KS = (1024, 16384)
D = 256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for device_check.json / device_check.md")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sections after this")
    p.add_argument("--ns", default=",".join(map(str, NS)), help="comma-separated N values")
    p.add_argument("--ks", default=",".join(map(str, KS)), help="comma-separated K values")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: correctness,aot,timing,pipeline")
    a = p.parse_args(argv)
    try:
        a.ns = [int(x) for x in a.ns.split(",") if x]
        a.ks = [int(x) for x in a.ks.split(",") if x]
    except ValueError:
        p.error("--ns/--ks must be comma-separated integers")
    if not a.ns or not a.ks or min(a.ns + a.ks) < 1:
        p.error("--ns/--ks need positive integers")
    a.skip = {s for s in a.skip.split(",") if s}
    unknown = a.skip - {"correctness", "aot", "timing", "pipeline"}
    if unknown:
        p.error(f"unknown section(s) in --skip: {', '.join(sorted(unknown))}")
    return a


def make_case(torch, n, k, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    e = torch.randn(k, D, device="cuda", generator=g) * (0.5 + torch.rand(k, 1, device="cuda", generator=g))
    z = torch.randn(n, D, device="cuda", generator=g) * 1.5 + 0.2
    e, z = e.to(dtype).contiguous(), z.to(dtype).contiguous()
    esq = (e.float() * e.float()).sum(1).contiguous()
    return z, e, esq


def run_fused(torch, nc, z, e, esq):
    idx = torch.empty(z.shape[0], dtype=torch.int32, device="cuda")
    codes = torch.empty_like(z)
    nc.launch(z, e, esq, idx, codes)
    return idx, codes


def oracle_gpu(torch, z, e, chunk=4096):
    """float64 argmin and best/second-best margin, row chunks (same formula as nearest_code_reference)."""
    e64 = e.double()
    esq = (e64 * e64).sum(1)
    idx, margin = [], []
    for s in range(0, z.shape[0], chunk):
        sc = esq[None, :] - 2.0 * (z[s:s + chunk].double() @ e64.T)
        if sc.shape[1] > 1:
            top = torch.topk(sc, 2, dim=1, largest=False)
            margin.append(top.values[:, 1] - top.values[:, 0])
        else:
            margin.append(torch.full((sc.shape[0],), float("inf"), device=sc.device, dtype=torch.float64))
        idx.append(torch.argmin(sc, dim=1))      # first minimum, like numpy
    return torch.cat(idx), torch.cat(margin)


def section_correctness(torch, nc, args, res):
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for k in args.ks:
            for n in args.ns:
                z, e, esq = make_case(torch, n, k, dtype, seed=n + k)
                idx, codes = run_fused(torch, nc, z, e, esq)
                ref_idx, margin = oracle_gpu(torch, z, e)
                scale = z.double().norm(dim=1) * e.double().norm(dim=1).max()
                decisive = margin > 1e-5 * scale
                mism = int((idx.long()[decisive] != ref_idx[decisive]).sum())
                exact = bool(torch.equal(codes, e[idx.long()]))
                row = {"dtype": dtype_name, "N": n, "K": k, "decisive": int(decisive.sum()), "mismatch": mism,
                       "codes_exact": exact, "ok": mism == 0 and exact}
                if n == args.ns[0]:      # tie the GPU float64 oracle to the numpy one
                    sl = slice(0, min(n, 256))
                    np_idx, _ = nc.nearest_code_reference(z[sl].float().cpu().numpy(), e.float().cpu().numpy())
                    row["numpy_oracle_agrees"] = bool(np.array_equal(np_idx, ref_idx[sl].cpu().numpy()))
                    row["ok"] = row["ok"] and row["numpy_oracle_agrees"]
                rows.append(row)
    res["correctness"] = rows


def section_aot(torch, nc, args, res):
    from cuda.bindings import driver as cu

    def check(r):
        err, *vals = r
        if err != cu.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver error {err}")
        return vals[0] if len(vals) == 1 else vals

    torch.cuda.init()
    check(cu.cuInit(0))
    ctx = check(cu.cuDevicePrimaryCtxRetain(check(cu.cuDeviceGet(torch.cuda.current_device()))))
    check(cu.cuCtxSetCurrent(ctx))      # torch's primary context
    major, minor = torch.cuda.get_device_capability()
    ptx_version = nc.ptx_version_for_driver(check(cu.cuDriverGetVersion()))
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        name, ptx, lp = nc.compile_ptx(major * 10 + minor, dtype_name, D, ptx_version=ptx_version)
        module = check(cu.cuModuleLoadData(ptx.encode() + b"\0"))
        fn = check(cu.cuModuleGetFunction(module, name.encode()))
        stream = torch.cuda.current_stream().cuda_stream
        for k in args.ks:
            n = 8192 + 37
            z, e, esq = make_case(torch, n, k, dtype, seed=7 + k)
            idx_jit, codes_jit = run_fused(torch, nc, z, e, esq)
            idx = torch.full((n,), -1, dtype=torch.int32, device="cuda")
            codes = torch.full_like(z, float("nan"))
            vals = (z.data_ptr(), e.data_ptr(), esq.data_ptr(), n, k, idx.data_ptr(), codes.data_ptr()) \
                + (0,) * lp.hidden_params
            types = (ctypes.c_void_p,) * 3 + (ctypes.c_int32,) * 2 + (ctypes.c_void_p,) * (2 + lp.hidden_params)
            gx, gy, gz = lp.grid(n)
            check(cu.cuLaunchKernel(fn, gx, gy, gz, lp.threads_per_block, 1, 1, lp.shared_mem, stream,
                                    (vals, types), 0))
            torch.cuda.synchronize()
            rows.append({"dtype": dtype_name, "N": n, "K": k, "ptx_version": ptx_version,
                         "launch": lp.to_dict(), "indices_equal_jit": bool(torch.equal(idx, idx_jit)),
                         "codes_equal_jit": bool(torch.equal(codes, codes_jit))})
        check(cu.cuModuleUnload(module))
    res["aot"] = rows


def bench(torch, fn):
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=10, rep=40))


def section_timing(torch, nc, args, res):
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for k in args.ks:
            for n in args.ns:
                z, e, esq = make_case(torch, n, k, dtype, seed=3)
                idx = torch.empty(n, dtype=torch.int32, device="cuda")
                codes = torch.empty_like(z)
                row = {"dtype": dtype_name, "N": n, "K": k}
                row["fused_ms"] = bench(torch, lambda: nc.launch(z, e, esq, idx, codes))
                et = e.t().contiguous()
                esq_t = esq.to(dtype)

                def mm_argmin():
                    i = torch.argmin(esq_t - 2 * (z @ et), dim=1)
                    return e[i]

                row["matmul_argmin_ms"] = bench(torch, mm_argmin)
                row["indices_equal_matmul"] = bool(torch.equal(idx.long(), torch.argmin(esq_t - 2 * (z @ et), dim=1)))
                try:
                    row["cdist_argmin_ms"] = bench(torch, lambda: e[torch.argmin(torch.cdist(z, e), dim=1)])
                except Exception as ex:           # cdist has no kernel for some dtypes
                    row["cdist_argmin_ms"] = None
                    row["cdist_error"] = str(ex).splitlines()[0]
                row["speedup_vs_matmul"] = row["matmul_argmin_ms"] / row["fused_ms"]
                rows.append(row)
        torch.cuda.empty_cache()
    res["timing"] = rows


def section_pipeline(torch, args, res):
    from quantart import StyleTransfer
    from quantart.models.config import official_config

    model = StyleTransfer(**official_config("stage2")).cuda().eval()
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        m = model.to(dtype)
        for batch in (1, 32):
            x = torch.rand(batch, 3, 256, 256, device="cuda", dtype=dtype) * 2 - 1
            ref = torch.rand(batch, 3, 256, 256, device="cuda", dtype=dtype) * 2 - 1
            try:
                with torch.inference_mode():
                    ms = bench(torch, lambda: m.stylize(x, ref))
                rows.append({"dtype": dtype_name, "batch": batch, "ms": ms, "images_per_s": batch / ms * 1e3})
            except Exception as ex:
                rows.append({"dtype": dtype_name, "batch": batch, "error": str(ex).splitlines()[0][:300]})
            torch.cuda.empty_cache()
    res["pipeline"] = rows


def target_verdict(res):
    rows = [r for r in res.get("timing", []) if r["N"] >= 8192 and r["K"] == 1024]
    if not rows:
        return None
    return {dt: all(r["speedup_vs_matmul"] >= 2.0 and r["indices_equal_matmul"] for r in rows if r["dtype"] == dt)
            for dt in sorted({r["dtype"] for r in rows})}


def markdown(res) -> str:
    out = ["# Device check: fused nearest-code kernel", "", f"- device: {res.get('device')}",
           f"- versions: {json.dumps(res.get('versions', {}))}", f"- wall: {res.get('wall_s', 0):.0f} s", ""]
    if res.get("correctness"):
        out += ["## Correctness vs float64 oracle", "", "| dtype | N | K | decisive rows | mismatches | codes exact | ok |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['N']} | {r['K']} | {r['decisive']} | {r['mismatch']} | {r['codes_exact']} | {r['ok']} |"
                for r in res["correctness"]]
    if res.get("aot"):
        out += ["", "## AOT PTX through cuda-python (plugin launch parameters)", "",
                "| dtype | N | K | PTX ISA | grid/block/smem | indices = JIT | codes = JIT |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['N']} | {r['K']} | {r['ptx_version']} | "
                f"{r['launch']['block_n']}-row tiles/{r['launch']['threads_per_block']}/{r['launch']['shared_mem']} | "
                f"{r['indices_equal_jit']} | {r['codes_equal_jit']} |" for r in res["aot"]]
    if res.get("timing"):
        out += ["", "## Timing (ms, median)", "",
                "| dtype | N | K | fused | matmul+argmin | cdist+argmin | speed-up vs matmul | same indices |",
                "|---|---|---|---|---|---|---|---|"]
        for r in res["timing"]:
            cd = f"{r['cdist_argmin_ms']:.3f}" if r.get("cdist_argmin_ms") is not None else "n/a"
            out.append(f"| {r['dtype']} | {r['N']} | {r['K']} | {r['fused_ms']:.3f} | {r['matmul_argmin_ms']:.3f} | "
                       f"{cd} | {r['speedup_vs_matmul']:.2f}x | {r['indices_equal_matmul']} |")
        out += ["", f"Target (fused >= 2x matmul+argmin at N >= 8192, K = 1024, identical indices): "
                f"{json.dumps(res.get('target'))}"]
    if res.get("pipeline"):
        out += ["", "## Torch eager pipeline, official architecture, 256x256", "", "| dtype | batch | ms | images/s |",
                "|---|---|---|---|"]
        out += [f"| {r['dtype']} | {r['batch']} | {r.get('ms', float('nan')):.1f} | "
                f"{r.get('images_per_s', float('nan')):.1f} |" if "ms" in r else
                f"| {r['dtype']} | {r['batch']} | error: {r['error']} | |" for r in res["pipeline"]]
    if res.get("errors"):
        out += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in res["errors"].items()]
    return "\n".join(out) + "\n"


def write(out, res):
    (out / "device_check.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "device_check.md").write_text(markdown(res))


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = {"errors": {}, "argv": sys.argv[1:], "python": platform.python_version()}
    import torch
    import triton

    from quantart_runtime.kernels import nearest_code as nc

    if not torch.cuda.is_available():
        res["errors"]["setup"] = "no CUDA device visible to torch"
        write(out, res)
        print("device_check: no CUDA device visible to torch", file=sys.stderr)
        return 2
    res["device"] = f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})"
    res["versions"] = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    sections = [("correctness", lambda: section_correctness(torch, nc, args, res)),
                ("aot", lambda: section_aot(torch, nc, args, res)),
                ("timing", lambda: section_timing(torch, nc, args, res)),
                ("pipeline", lambda: section_pipeline(torch, args, res))]
    for name, fn in sections:
        if name in args.skip:
            continue
        if time.time() - t0 > args.budget_s:
            res["errors"][name] = f"skipped: time budget of {args.budget_s:.0f} s used up"
            continue
        s0 = time.time()
        try:
            fn()
        except Exception as ex:
            res["errors"][name] = f"{type(ex).__name__}: {ex}".splitlines()[0][:500]
            (out / f"{name}.traceback.txt").write_text(traceback.format_exc())
        res.setdefault("section_s", {})[name] = round(time.time() - s0, 1)
        res["target"] = target_verdict(res)
        res["wall_s"] = time.time() - t0
        write(out, res)
        print(f"device_check: {name} done in {time.time() - s0:.0f} s", flush=True)
    ok = all(r["ok"] for r in res.get("correctness", [])) and \
        all(r["indices_equal_jit"] and r["codes_equal_jit"] for r in res.get("aot", []))
    print((out / "device_check.md").read_text())
    return 0 if ok and not {"correctness", "aot"} & set(res["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
