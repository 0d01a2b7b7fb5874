"""The GPU sections of benchmarks/device_check.py (each fills one list of rows in the result dict).

Needs a CUDA device with torch and triton (cuda-python for ``aot`` and ``memory``); loaded by path
from device_check.py, so it imports nothing from the quantart packages except in ``pipeline``.
"""
from __future__ import annotations

import ctypes

import numpy as np

DTYPES = (("fp32", "float32"), ("fp16", "float16"))


def make_case(torch, n: int, k: int, d: int, dtype, seed: int = 0):
    """Random latents z (N, D) and a codebook e (K, D) with uneven row norms, plus e's squared norms."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    e = torch.randn(k, d, device="cuda", generator=g) * (0.5 + torch.rand(k, 1, device="cuda", generator=g))
    z = torch.randn(n, d, device="cuda", generator=g) * 1.5 + 0.2
    e, z = e.to(dtype).contiguous(), z.to(dtype).contiguous()
    esq = (e.float() * e.float()).sum(1).contiguous()
    return z, e, esq


def run_fused(torch, nc, z, e, esq):
    """The Triton kernel through ``launch`` -> (indices int32, codes)."""
    idx = torch.empty(z.shape[0], dtype=torch.int32, device="cuda")
    codes = torch.empty_like(z)
    nc.launch(z, e, esq, idx, codes)
    return idx, codes


def oracle(torch, z, e, chunk: int = 4096):
    """float64 argmin (first minimum) and best/second-best margin, by row chunks, on the GPU."""
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
        idx.append(torch.argmin(sc, dim=1))
    return torch.cat(idx), torch.cat(margin)


def correctness(torch, nc, args, res):
    """Kernel vs float64 oracle over args.ns x args.ks x args.ds x {fp32, fp16}."""
    rows = res.setdefault("correctness", [])
    for name, tname in DTYPES:
        dtype = getattr(torch, tname)
        for d in args.ds:
            for k in args.ks:
                for n in args.ns:
                    z, e, esq = make_case(torch, n, k, d, dtype, seed=n + k + d)
                    idx, codes = run_fused(torch, nc, z, e, esq)
                    ref, margin = oracle(torch, z, e)
                    scale = z.double().norm(dim=1) * e.double().norm(dim=1).max()
                    decisive = margin > 1e-5 * scale
                    mism = int((idx.long()[decisive] != ref[decisive]).sum())
                    exact = bool(torch.equal(codes, e[idx.long()]))
                    row = {"dtype": name, "N": n, "K": k, "D": d, "decisive": int(decisive.sum()),
                           "mismatch": mism, "codes_exact": exact, "ok": mism == 0 and exact}
                    if n == args.ns[0] and k == args.ks[0]:      # tie the GPU oracle to the numpy one
                        sl = slice(0, min(n, 256))
                        np_idx, _ = nc.nearest_code_reference(z[sl].float().cpu().numpy(), e.float().cpu().numpy())
                        row["numpy_oracle_agrees"] = bool(np.array_equal(np_idx, ref[sl].cpu().numpy()))
                        row["ok"] = row["ok"] and row["numpy_oracle_agrees"]
                    rows.append(row)
                    del z, e, esq, idx, codes, ref, margin
            torch.cuda.empty_cache()


def _driver():
    from cuda.bindings import driver as cu

    def check(r):
        err, *vals = r
        if err != cu.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver error {err}")
        return vals[0] if len(vals) == 1 else (vals or None)

    return cu, check


def aot(torch, nc, args, res):
    """The plugin's PTX for this driver, loaded and launched through cuda-python, vs the JIT kernel."""
    cu, check = _driver()
    torch.cuda.init()
    check(cu.cuInit(0))
    ctx = check(cu.cuDevicePrimaryCtxRetain(check(cu.cuDeviceGet(torch.cuda.current_device()))))
    check(cu.cuCtxSetCurrent(ctx))      # torch's primary context
    major, minor = torch.cuda.get_device_capability()
    arch = major * 10 + minor
    ptx_version = nc.ptx_version_for_driver(check(cu.cuDriverGetVersion()), arch)
    rows = res.setdefault("aot", [])
    for name, tname in DTYPES:
        dtype = getattr(torch, tname)
        for d in args.ds:
            kname, ptx, lp = nc.compile_ptx(arch, name, d, ptx_version=ptx_version)
            module = check(cu.cuModuleLoadData(ptx.encode() + b"\0"))
            fn = check(cu.cuModuleGetFunction(module, kname.encode()))
            stream = torch.cuda.current_stream().cuda_stream
            for k in (args.ks[0], args.ks[-1]):
                n = 8192 + 37
                z, e, esq = make_case(torch, n, k, d, dtype, seed=7 + k)
                idx_jit, codes_jit = run_fused(torch, nc, z, e, esq)
                idx = torch.full((n,), -1, dtype=torch.int32, device="cuda")
                codes = torch.full_like(z, float("nan"))
                # exactly TensorRT's AOT argument list: inputs, SymInt32 extras, outputs (no scratch)
                vals = (z.data_ptr(), e.data_ptr(), esq.data_ptr(), n, k, idx.data_ptr(), codes.data_ptr())
                types = (ctypes.c_void_p,) * 3 + (ctypes.c_int32,) * 2 + (ctypes.c_void_p,) * 2
                assert len(vals) == len(lp.params) == len(nc.ptx_entry_params(ptx, kname))
                gx, gy, gz = lp.grid(n)
                check(cu.cuLaunchKernel(fn, gx, gy, gz, lp.threads_per_block, 1, 1, lp.shared_mem, stream,
                                        (vals, types), 0))
                torch.cuda.synchronize()
                row = {"dtype": name, "D": d, "N": n, "K": k, "ptx_version": ptx_version,
                       "threads_per_block": lp.threads_per_block, "shared_mem": lp.shared_mem,
                       "indices_equal_jit": bool(torch.equal(idx, idx_jit)),
                       "codes_equal_jit": bool(torch.equal(codes, codes_jit))}
                row["ok"] = row["indices_equal_jit"] and row["codes_equal_jit"]
                rows.append(row)
            check(cu.cuModuleUnload(module))


def _bench(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=5, rep=25))


def _time_case(torch, nc, name: str, n: int, k: int, d: int) -> dict:
    z, e, esq = make_case(torch, n, k, d, getattr(torch, dict(DTYPES)[name]), seed=3)
    idx = torch.empty(n, dtype=torch.int32, device="cuda")
    codes = torch.empty_like(z)
    et = e.t().contiguous()
    esq_t = esq.to(z.dtype)

    def torch_path():
        i = torch.argmin(esq_t - 2 * (z @ et), dim=1)
        return i, e[i]

    row = {"dtype": name, "N": n, "K": k, "D": d}
    row["fused_ms"] = _bench(lambda: nc.launch(z, e, esq, idx, codes))
    row["torch_ms"] = _bench(torch_path)
    row["speedup"] = row["torch_ms"] / row["fused_ms"]
    row["indices_equal_torch"] = bool(torch.equal(idx.long(), torch_path()[0]))
    return row


def timing(torch, nc, args, res):
    """Fused kernel vs torch matmul + argmin + gather (FP32 without TF32; FP16)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = res.setdefault("timing", [])
    for name, _ in DTYPES:
        for d in args.ds:
            for k in args.ks:
                for n in args.timing_ns:
                    rows.append(_time_case(torch, nc, name, n, k, d))
            torch.cuda.empty_cache()


def memory(torch, cm, res):
    """The GPU runners' device path (runtime/backends/cuda_mem.py) on the real device: pinned
    staging, one upload, stream-ordered allocation, doubling broadcast, one download, views."""
    rows = res.setdefault("memory", [])
    stream = cm.Stream(torch.cuda.current_device())
    try:
        rng = np.random.default_rng(0)
        style = rng.standard_normal((1, 256, 16, 16)).astype(np.float32)
        staging = cm.PinnedStaging()
        host = staging.array(style.shape, style.dtype)
        host[...] = style
        dev = cm.DeviceArray(style.shape, style.dtype, stream)
        cm.copy_h2d(dev.ptr, host, stream)
        staging.mark(stream)
        for batch in (1, 2, 3, 7, 32):
            out = cm.DeviceArray((batch,) + style.shape[1:], style.dtype, stream)
            cm.broadcast_rows(out.ptr, dev.ptr, dev.nbytes, batch, stream)
            back = np.empty(out.shape, out.dtype)
            cm.copy_d2h(back, out.ptr, stream)
            stream.synchronize()
            rows.append({"check": f"broadcast x{batch}", "ok": bool(np.array_equal(back, np.repeat(style, batch, 0)))})
            out.release()
        view = dev.view((256, 16 * 16))
        back = np.empty(view.shape, view.dtype)
        cm.copy_d2h(back, view.ptr, stream)
        stream.synchronize()
        rows.append({"check": "view", "ok": bool(np.array_equal(back, style.reshape(256, -1)))})
        again = staging.array(style.shape, style.dtype)      # waits on the upload's event
        rows.append({"check": "pinned staging reuse", "ok": bool(again.ctypes.data == host.ctypes.data)})
        free0, total = cm.device_memory(torch.cuda.current_device())
        rows.append({"check": "device_memory", "ok": 0 < free0 <= total,
                     "detail": f"{free0 / 2**30:.1f} of {total / 2**30:.1f} GiB free"})
        dev.release()
        staging.release()
    finally:
        stream.close()


def pipeline(torch, res, one_line):
    """Torch eager official architecture at 256x256, batch 1 and 32, FP32 and FP16 (needs quantart);
    ``one_line`` formats a failed case's error."""
    from quantart import StyleTransfer
    from quantart.models.config import official_config

    model = StyleTransfer(**official_config("stage2")).cuda().eval()
    rows = res.setdefault("pipeline", [])
    for name, tname in DTYPES:
        m = model.to(getattr(torch, tname))
        for batch in (1, 32):
            x = torch.rand(batch, 3, 256, 256, device="cuda", dtype=getattr(torch, tname)) * 2 - 1
            ref = torch.rand_like(x) * 2 - 1
            try:
                with torch.inference_mode():
                    ms = _bench(lambda m=m, x=x, ref=ref: m.stylize(x, ref))
                rows.append({"dtype": name, "batch": batch, "ms": ms, "images_per_s": batch / ms * 1e3})
            except Exception as ex:
                rows.append({"dtype": name, "batch": batch, "error": one_line(ex)})
            torch.cuda.empty_cache()


def _pool_state(cm, device: int) -> dict:
    """The default memory pool's threshold / reserved / used bytes on ``device``."""
    rt = cm.cudart()
    cm.set_device(device)
    pool = cm.check(rt.cudaDeviceGetDefaultMemPool(device))
    get = lambda a: int(cm.check(rt.cudaMemPoolGetAttribute(pool, getattr(rt.cudaMemPoolAttr, f"cudaMemPoolAttr{a}"))))  # noqa: E731
    return {"threshold": get("ReleaseThreshold"), "reserved": get("ReservedMemCurrent"), "used": get("UsedMemCurrent")}


def _prefetch_run(runner, batches: int, shape=(4, 3, 64, 64)) -> bool:
    """The Stylizer's pattern: a worker thread (which never calls cudaSetDevice) preprocesses batch
    n+1 into staging slot (n+1) % 2 while this thread uploads batch n, broadcasts a style code and
    downloads; plus a new staging slot per batch (new entries in the runner's buffer table)."""
    from concurrent.futures import ThreadPoolExecutor

    def staged(n):
        buf = runner.staging(shape, np.float32, slot=n % 2)
        buf[...] = n
        extra = runner.staging((16,), np.float32, slot=1000 + n)
        extra[...] = -n
        return buf

    ok = True
    style = runner.to_device(np.arange(8, dtype=np.float32).reshape(1, 8))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantart-preprocess") as pool:
        pending = pool.submit(staged, 0)
        for n in range(batches):
            x = pending.result()
            if n + 1 < batches:
                pending = pool.submit(staged, n + 1)
            dev = runner.to_device(x)
            many = runner.broadcast(style, shape[0])
            ok &= bool(np.all(runner.to_host(dev) == n))
            want = np.repeat(np.arange(8, dtype=np.float32)[None], shape[0], 0)
            ok &= bool(np.array_equal(runner.to_host(many), want))
    return ok


def runner_memory(torch, cm, trt_runner_cls, res):
    """TensorRTRunner's data path on the device without TensorRT (``start_memory``: stream, pool,
    shared context memory): items 1, 2, 5, 6 and 7 of issue 24."""
    rows = res.setdefault("runner", [])
    count = torch.cuda.device_count()
    for device in sorted({0, count - 1}):
        before = _pool_state(cm, device)
        runner = trt_runner_cls("none", {"graphs": {"fp32": {}}}, device=device)
        runner.start_memory()
        runner.active = True
        try:
            rows.append({"check": f"prefetch x48 batches, device {device}", "ok": _prefetch_run(runner, 48),
                         "detail": "worker thread stages, main thread uploads / broadcasts / downloads"})
            warm = _pool_state(cm, device)
            rows.append({"check": f"pool release threshold set, device {device}", "ok": warm["threshold"] == 2**64 - 1,
                         "detail": f"{warm['threshold']:#x} (was {before['threshold']:#x})"})
            scratch = runner.scratch
            scratch.bind(256 << 20, 1 << 30)
            scratch.bind(512 << 20, 1 << 30)
            runner.stream.synchronize()
            used = _pool_state(cm, device)["used"]
            try:
                scratch.bind(0, 1 << 30)
                zero = False
            except RuntimeError:
                zero = True
            rows.append({"check": f"shared context memory grows, old freed, 0 = error, device {device}",
                         "ok": zero and scratch.grown == 2 and used - warm["used"] < (600 << 20),
                         "detail": f"used {(used - warm['used']) / 2**20:.0f} MiB after growing 256 -> 512 MiB"})
            held = [runner.to_device(np.ones((64, 1 << 20), np.float32))]      # 256 MiB kept by the caller
            held.append(runner.broadcast(runner.to_device(np.ones((1, 1 << 20), np.float32)), 64))
            runner.stream.synchronize()
            busy = _pool_state(cm, device)
        finally:
            runner.deactivate()
        after = _pool_state(cm, device)
        rows.append({"check": f"arrays held by the caller freed by deactivate, device {device}",
                     "ok": not any(a.alive for a in held) and after["used"] <= before["used"],
                     "detail": f"used {busy['used'] / 2**20:.0f} MiB active -> {after['used'] / 2**20:.0f} MiB"})
        rows.append({"check": f"pool trimmed and threshold restored after deactivate, device {device}",
                     "ok": after["threshold"] == before["threshold"]
                     and after["reserved"] <= before["reserved"] + (32 << 20),
                     "detail": f"reserved {busy['reserved'] / 2**20:.0f} MiB -> {after['reserved'] / 2**20:.0f} MiB"})
    if count < 2:
        rows.append({"check": "second device", "ok": True, "detail": "one GPU: device N != 0 not checked"})
