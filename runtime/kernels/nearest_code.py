"""Fused nearest-codebook kernel (Triton): argmin_k ‖e_k‖² − 2 z·e_k, then gather (and blend).

One program handles BLOCK_N latent rows. It walks the codebook in BLOCK_K tiles, accumulating the
dot products in FP32 over BLOCK_D slices of the embedding (``input_precision="ieee"``: no TF32 for
FP32 inputs; FP16 inputs multiply exactly into an FP32 accumulator), keeps a running (best score,
best index) per row with a strict ``<`` so ties resolve to the lowest index, then writes int32
indices and the chosen codebook rows (copied bit for bit, or blended with z by ``ratio``).

The runtime package imports with numpy only, so Triton is imported lazily: ``nearest_code_kernel``,
``launch`` and ``compile_ptx`` import it on first use; ``nearest_code_reference`` (the float64 oracle)
needs numpy only. Parameter order follows TensorRT's AOT plugin convention
(input pointers, int32 scalars, output pointers); ``ratio`` is specialised away in the PTX.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

KERNEL_NAME = "nearest_code_kernel"
SUPPORTED_ARCHS = (80, 86, 89, 90, 100, 103, 110, 120, 121)
# The GPUs of each architecture (for error messages). Triton 3.9 assembles sm_90 and newer with its
# `ptxas-blackwell` (``ptxas_path``); sm_75 and older are outside what the kernel was checked on.
ARCH_GPUS = {80: "A100/A30", 86: "A10/A40/RTX 30", 89: "L4/L40/RTX 40", 90: "H100/H200/GH200",
             100: "B200/GB200", 103: "B300/GB300", 110: "Jetson Thor", 120: "RTX 50/RTX PRO 6000 Blackwell",
             121: "DGX Spark (GB10)"}
SUPPORTED_DTYPES = ("fp32", "fp16")
# Runtime (non-constexpr) parameters of the kernel, in order; `ratio` is only a runtime parameter
# for the JIT path (`launch`), the AOT PTX specialises it to 1.0.
PTX_PARAMS = ("z_ptr", "e_ptr", "esq_ptr", "n_rows", "n_codes", "idx_ptr", "codes_ptr")
MAX_STATIC_SHARED = 48 * 1024


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of one kernel launch: BLOCK_N latent rows per program, BLOCK_K codes per score tile,
    BLOCK_D embedding columns per dot-product slice; Triton's num_warps and num_stages."""
    block_n: int
    block_k: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 2


def default_config(dtype: str, embed_dim: int) -> TileConfig:
    """Tile sizes used by both `launch` and `compile_ptx` (the plugin)."""
    block_d = min(64 if dtype == "fp16" else 32, max(16, _next_pow2(embed_dim)))
    return TileConfig(block_n=64, block_k=64, block_d=block_d, num_warps=4, num_stages=2)


@dataclass(frozen=True)
class LaunchParams:
    """What the TensorRT plugin (or a raw cuLaunchKernel) needs to launch the AOT kernel."""
    arch: int
    dtype: str
    embed_dim: int
    block_n: int
    block_k: int
    block_d: int
    num_warps: int
    num_stages: int
    threads_per_block: int      # block_x
    shared_mem: int             # dynamic shared memory bytes
    params: tuple               # kernel parameters TensorRT passes, in order: exactly the PTX entry's
    hidden_params: int          # Triton's trailing scratch pointers stripped from the entry (always 2)

    def grid(self, n_rows: int) -> tuple[int, int, int]:
        """The launch grid for ``n_rows`` latent rows: (ceil(n_rows / block_n), 1, 1), at least one."""
        return (max(1, -(-int(n_rows) // self.block_n)), 1, 1)

    def to_dict(self) -> dict:
        """The fields as a JSON-friendly dict (for reports)."""
        return asdict(self)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


_KERNEL = None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def nearest_code_kernel(z_ptr, e_ptr, esq_ptr, n_rows, n_codes, ratio, idx_ptr, codes_ptr,
                            D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLEND: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < n_rows
        rows64 = rows.to(tl.int64)
        dcols = tl.arange(0, BLOCK_D)
        best_val = tl.full([BLOCK_N], float("inf"), tl.float32)
        best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
        for k0 in range(0, n_codes, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < n_codes
            ks64 = ks.to(tl.int64)
            acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                ds = d0 + dcols
                d_ok = ds < D
                zt = tl.load(z_ptr + rows64[:, None] * D + ds[None, :],
                             mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                et = tl.load(e_ptr + ks64[None, :] * D + ds[:, None],
                             mask=k_ok[None, :] & d_ok[:, None], other=0.0)
                acc = tl.dot(zt, et, acc, input_precision="ieee")
            esq = tl.load(esq_ptr + ks, mask=k_ok, other=0.0)
            scores = esq[None, :] - acc * 2.0
            scores = tl.where(k_ok[None, :], scores, float("inf"))
            tile_val, tile_arg = tl.min(scores, axis=1, return_indices=True,
                                        return_indices_tie_break_left=True)
            better = tile_val < best_val
            best_val = tl.where(better, tile_val, best_val)
            best_idx = tl.where(better, (tile_arg + k0).to(tl.int32), best_idx)
        tl.store(idx_ptr + rows64, best_idx, mask=row_ok)
        best64 = best_idx.to(tl.int64)
        for d0 in tl.static_range(0, D, BLOCK_D):
            ds = d0 + dcols
            m = row_ok[:, None] & (ds < D)[None, :]
            rows_e = tl.load(e_ptr + best64[:, None] * D + ds[None, :], mask=m, other=0.0)
            if BLEND:
                zt = tl.load(z_ptr + rows64[:, None] * D + ds[None, :], mask=m, other=0.0)
                mixed = ratio * rows_e.to(tl.float32) + (1.0 - ratio) * zt.to(tl.float32)
                rows_e = mixed.to(codes_ptr.dtype.element_ty)
            tl.store(codes_ptr + rows64[:, None] * D + ds[None, :], rows_e, mask=m)

    return nearest_code_kernel


def __getattr__(name):
    # `nearest_code_kernel` is built on first access so that this module imports without Triton.
    global _KERNEL
    if name == KERNEL_NAME:
        if _KERNEL is None:
            _KERNEL = _build_kernel()
        return _KERNEL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dtype_name(dtype) -> str:
    name = str(dtype).rsplit(".", 1)[-1]
    return {"float32": "fp32", "float16": "fp16", "int32": "int32"}.get(name, name)


def launch(z, codebook, codebook_sqnorm, indices, codes, ratio: float = 1.0, config: TileConfig | None = None):
    """Run the kernel on tensors Triton accepts (torch tensors; CPU ones under TRITON_INTERPRET=1).

    z (N, D) and codebook (K, D) share a dtype (fp32 or fp16); codebook_sqnorm (K,) fp32;
    indices (N,) int32 and codes (N, D) in z's dtype are written.
    """
    zt, et = _dtype_name(z.dtype), _dtype_name(codebook.dtype)
    if len(z.shape) != 2 or len(codebook.shape) != 2 or z.shape[1] != codebook.shape[1]:
        raise ValueError(f"nearest_code.launch: need z (N, D) and codebook (K, D), "
                         f"got {tuple(z.shape)} and {tuple(codebook.shape)}")
    n, d = int(z.shape[0]), int(z.shape[1])
    k = int(codebook.shape[0])
    if zt not in SUPPORTED_DTYPES or et != zt:
        raise ValueError(f"nearest_code.launch: z and codebook must both be fp32 or both fp16, got {zt} and {et}")
    if k < 1 or d < 1:
        raise ValueError(f"nearest_code.launch: empty codebook or embedding (K={k}, D={d})")
    if tuple(codebook_sqnorm.shape) != (k,) or _dtype_name(codebook_sqnorm.dtype) != "fp32":
        raise ValueError(f"nearest_code.launch: codebook_sqnorm must be fp32 ({k},), "
                         f"got {_dtype_name(codebook_sqnorm.dtype)} {tuple(codebook_sqnorm.shape)}")
    if tuple(indices.shape) != (n,) or _dtype_name(indices.dtype) != "int32":
        raise ValueError(f"nearest_code.launch: indices must be int32 ({n},), "
                         f"got {_dtype_name(indices.dtype)} {tuple(indices.shape)}")
    if tuple(codes.shape) != (n, d) or _dtype_name(codes.dtype) != zt:
        raise ValueError(f"nearest_code.launch: codes must be {zt} ({n}, {d}), "
                         f"got {_dtype_name(codes.dtype)} {tuple(codes.shape)}")
    for name, t in (("z", z), ("codebook", codebook), ("codebook_sqnorm", codebook_sqnorm),
                    ("indices", indices), ("codes", codes)):
        if hasattr(t, "is_contiguous") and not t.is_contiguous():
            raise ValueError(f"nearest_code.launch: {name} must be contiguous")
    if n == 0:
        return indices, codes
    cfg = config or default_config(zt, d)
    kernel = __getattr__(KERNEL_NAME)
    ratio = float(ratio)
    grid = (-(-n // cfg.block_n),)
    kernel[grid](z, codebook, codebook_sqnorm, n, k, ratio, indices, codes,
                 D=d, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
                 BLEND=ratio != 1.0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                 enable_fp_fusion=False)
    return indices, codes


class UnsupportedArch(ValueError):
    """The GPU architecture is outside ``SUPPORTED_ARCHS`` (the message names the supported GPUs)."""


def supported_gpus() -> str:
    """"sm_80 (A100/A30), sm_86 (...), ..." for messages."""
    return ", ".join(f"sm_{a} ({ARCH_GPUS[a]})" for a in SUPPORTED_ARCHS)


def _parse_arch(arch) -> int:
    m = re.fullmatch(r"(?:sm_?)?(\d{2,3})", str(arch).strip().lower())
    if not m or int(m.group(1)) not in SUPPORTED_ARCHS:
        raise UnsupportedArch(f"unsupported arch {arch!r} for the nearest-code kernel; supported: "
                              f"{supported_gpus()}")
    return int(m.group(1))


def ptx_entry_params(ptx: str, kernel_name: str) -> list[str]:
    """Parameter names of the `.entry kernel_name(...)` in PTX text, in order."""
    m = re.search(r"\.entry\s+" + re.escape(kernel_name) + r"\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise ValueError(f"PTX has no .entry {kernel_name}")
    return re.findall(r"\.param\s+\.\w+\s+(?:\.ptr\s+\.\w+\s+\.align\s+\d+\s+)?(\w+)", m.group(1))


def strip_unused_params(ptx: str, kernel_name: str, keep: int) -> tuple[str, int]:
    """Drop the entry's parameters after the first ``keep`` -> (ptx, number dropped).

    TensorRT's AOT plugin launch passes exactly the declared arguments (inputs, SymInt32 extras,
    outputs), but Triton appends two scratch pointers (global, profile) to every kernel. A launch
    with fewer arguments than the entry declares reads past the argument list, so the trailing
    parameters are removed from the ``.entry`` when nothing in the PTX reads them (``ld.param``);
    ``RuntimeError`` otherwise.
    """
    m = re.search(r"(\.entry\s+" + re.escape(kernel_name) + r"\s*\()(.*?)(\))", ptx, re.S)
    if not m:
        raise ValueError(f"PTX has no .entry {kernel_name}")
    decls = [d for d in m.group(2).split(",") if d.strip()]
    names = ptx_entry_params(ptx, kernel_name)
    if len(decls) != len(names) or len(names) < keep:
        raise RuntimeError(f"PTX entry {kernel_name} has {len(names)} parameters, expected at least {keep}")
    body = ptx[m.end():]
    for name in names[keep:]:
        if re.search(r"\b" + re.escape(name) + r"\b", body):
            raise RuntimeError(f"PTX entry {kernel_name}: trailing parameter {name} is read by the kernel; "
                               f"TensorRT's AOT launch cannot pass it")
    params = ",".join(decls[:keep]).rstrip() + "\n"
    return ptx[:m.start(2)] + params + ptx[m.start(3):], len(names) - keep


def compile_ptx(arch, dtype: str, embed_dim: int, config: TileConfig | None = None,
                ptx_version: int | None = None):
    """Compile the kernel ahead of time (no GPU needed) -> (kernel_name, ptx, LaunchParams).

    The PTX entry takes exactly (z, codebook, sqnorm, n_rows:i32, n_codes:i32, indices, codes), the
    arguments TensorRT's AOT launch passes: Triton's trailing scratch pointers are stripped
    (``strip_unused_params``; the metadata check guarantees that no scratch is needed).
    Raises ``UnsupportedArch`` (a ``ValueError``) for an architecture outside ``SUPPORTED_ARCHS``.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sm = _parse_arch(arch)
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"compile_ptx: dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    embed_dim = int(embed_dim)
    if embed_dim < 1:
        raise ValueError(f"compile_ptx: embed_dim must be positive, got {embed_dim}")
    cfg = config or default_config(dtype, embed_dim)
    kernel = __getattr__(KERNEL_NAME)
    signature = {"z_ptr": f"*{dtype}", "e_ptr": f"*{dtype}", "esq_ptr": "*fp32", "n_rows": "i32",
                 "n_codes": "i32", "ratio": "constexpr", "idx_ptr": "*i32", "codes_ptr": f"*{dtype}",
                 "D": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "BLOCK_D": "constexpr",
                 "BLEND": "constexpr"}
    constexprs = {"ratio": 1.0, "D": embed_dim, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                  "BLOCK_D": cfg.block_d, "BLEND": False}
    # TensorRT allocates tensors 256-byte aligned: let Triton vectorise the pointer loads.
    arg_names = kernel.arg_names
    attrs = {(arg_names.index(p),): [["tt.divisibility", 16]]
             for p in ("z_ptr", "e_ptr", "esq_ptr", "idx_ptr", "codes_ptr")}
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "enable_fp_fusion": False}
    if ptx_version is not None:
        # Triton assembles its PTX with its bundled ptxas: an ISA above that ptxas's is refused
        # ("Unsupported .version"), so never ask for more than it accepts.
        options["ptx_version"] = min(int(ptx_version), ptxas_ptx_version(sm))
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                              target=GPUTarget("cuda", sm, 32), options=options)
    md = compiled.metadata
    name, ptx = md.name, compiled.asm["ptx"]
    check_launch_metadata(md)
    ptx, hidden = strip_unused_params(ptx, name, len(PTX_PARAMS))
    lp = LaunchParams(arch=sm, dtype=dtype, embed_dim=embed_dim, block_n=cfg.block_n, block_k=cfg.block_k,
                      block_d=cfg.block_d, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      threads_per_block=cfg.num_warps * 32, shared_mem=int(md.shared),
                      params=PTX_PARAMS, hidden_params=hidden)
    return name, ptx, lp


def check_launch_metadata(md) -> None:
    """Raise ``RuntimeError`` unless a compiled kernel can be launched by TensorRT's AOT plugin path.

    TensorRT launches the PTX with a plain grid/block/shared-memory triple (``KernelLaunchParams``)
    and only the declared arguments (no scratch pointers: ``strip_unused_params``), so the kernel
    must need no global or profile scratch, one CTA per cluster, no cooperative grid, no
    programmatic dependent launch and no TMA descriptors, and at most 48 KiB of static shared
    memory. Tensor memory (Blackwell's tcgen05 MMA) is allocated inside the kernel, so it is allowed
    up to the 512 columns Triton's own launcher allows (``CompiledKernel._init_handles``). These are
    the fields Triton's own launcher acts on (``backends/nvidia/driver.py``); every field must be
    present: a missing one means an untested Triton.
    """
    required = {"global_scratch_size": lambda v: v == 0, "profile_scratch_size": lambda v: v == 0,
                "num_ctas": lambda v: v == 1, "launch_cooperative_grid": lambda v: not v,
                "launch_pdl": lambda v: not v, "tmem_size": lambda v: not v or int(v) <= 512,
                "tensordesc_meta": lambda v: not v, "shared": lambda v: 0 <= int(v) <= MAX_STATIC_SHARED}
    for field, ok in required.items():
        if not hasattr(md, field):
            raise RuntimeError(f"compile_ptx: Triton's kernel metadata has no {field!r}; this Triton "
                               f"is not one the AOT plugin was checked against (see setup.cfg)")
        value = getattr(md, field)
        if not ok(value):
            raise RuntimeError(f"compile_ptx: kernel needs {field}={value!r}, which a TensorRT AOT launch "
                               f"cannot provide (use smaller tiles or another kernel configuration)")


def ptx_isa_for_cuda(version: str) -> int:
    """PTX ISA (as Triton's ``ptx_version`` option, 84 = 8.4) that CUDA ``version`` ("12.4") supports.

    The same table as Triton's ``ptx_get_version``, without importing Triton. Raises ``ValueError``
    for a version that is not "major.minor" or older than CUDA 11.
    """
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(version))
    if not m:
        raise ValueError(f"CUDA version must look like '12.4', got {version!r}")
    major, minor = int(m.group(1)), int(m.group(2))
    if major >= 13:
        return 90 + (major - 13) * 10 + minor
    if major == 12:
        return 80 + minor if minor < 6 else 80 + minor - 1
    if major == 11:
        return 70 + minor
    raise ValueError(f"CUDA {version} is older than 11.0, which the kernel does not support")


def driver_ptx_version(driver_version: int) -> int:
    """Highest PTX ISA a CUDA driver can JIT; ``driver_version`` is cuDriverGetVersion's integer
    (12040 for CUDA 12.4)."""
    v = int(driver_version)
    return ptx_isa_for_cuda(f"{v // 1000}.{(v % 1000) // 10}")


def ptxas_path(arch: int) -> str:
    """Path of the ptxas Triton uses for ``arch`` (``TRITON_PTXAS_PATH`` /
    ``TRITON_PTXAS_BLACKWELL_PATH`` first, else the one bundled with Triton), found without
    importing Triton. Raises ``FileNotFoundError`` when there is none."""
    import importlib.util
    import os

    tool = "ptxas" if int(arch) < 90 else "ptxas-blackwell"   # Triton 3.9: get_ptxas(arch)
    env = os.environ.get(f"TRITON_{tool.upper().replace('-', '_')}_PATH")
    if env:
        return env
    spec = importlib.util.find_spec("triton")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "backends", "nvidia", "bin", tool)
        if os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"no {tool} for sm_{arch}: Triton is not installed (pip install 'quantart[gpu]')")


_PTXAS_ISA: dict = {}


def ptxas_ptx_version(arch: int) -> int:
    """Highest PTX ISA the ptxas Triton uses for ``arch`` accepts (its ``--version`` release), cached
    per process; runs the binary (no GPU, no Triton import). Raises ``RuntimeError`` if unreadable."""
    import subprocess

    path = ptxas_path(arch)
    if path not in _PTXAS_ISA:
        try:
            text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"cannot run {path} --version ({exc})") from None
        m = re.search(r"release (\d+\.\d+)", text)
        if not m:
            raise RuntimeError(f"{path} --version printed no release number")
        _PTXAS_ISA[path] = ptx_isa_for_cuda(m.group(1))
    return _PTXAS_ISA[path]


def ptx_version_for_driver(driver_version: int, arch: int) -> int:
    """PTX ISA to compile for: min(what the driver can JIT, what Triton's ptxas for ``arch`` accepts).

    A CUDA 13.0 driver JITs PTX 9.0 but Triton 3.9's ptxas for sm_80 stops at 8.8 ("Unsupported
    .version 9.0"); the smaller of the two is both assemblable here and loadable there. No
    Triton import (the engine cache key needs this on every load).
    """
    return min(driver_ptx_version(driver_version), ptxas_ptx_version(_parse_arch(arch)))


def nearest_code_reference(z, codebook, ratio: float = 1.0, return_margin: bool = False):
    """Float64 oracle: (indices int64 (N,), codes float64 (N, D)[, margin (N,)]).

    codes are codebook rows (blended with z when ratio != 1). `margin` is the float64 gap between
    the best and second-best score, the quantity the acceptance rule compares with
    1e-5·‖z‖·max‖e‖ (infinite when K == 1).
    """
    z64 = np.asarray(z, dtype=np.float64)
    e64 = np.asarray(codebook, dtype=np.float64)
    if z64.ndim != 2 or e64.ndim != 2 or z64.shape[1] != e64.shape[1] or e64.shape[0] < 1:
        raise ValueError(f"nearest_code_reference: need z (N, D) and codebook (K>=1, D), "
                         f"got {z64.shape} and {e64.shape}")
    scores = (e64 * e64).sum(1)[None, :] - 2.0 * (z64 @ e64.T)
    idx = np.argmin(scores, axis=1)
    codes = e64[idx]
    if ratio != 1.0:
        codes = ratio * codes + (1.0 - ratio) * z64
    if not return_margin:
        return idx, codes
    if e64.shape[0] == 1:
        margin = np.full(z64.shape[0], np.inf)
    else:
        part = np.partition(scores, 1, axis=1)
        margin = part[:, 1] - part[:, 0]
    return idx, codes, margin


def decisive_rows(z, codebook, margin, rel_tol: float = 1e-5):
    """Rows whose best/second-best gap exceeds rel_tol·‖z‖·max‖e‖ (where indices must agree)."""
    z64 = np.asarray(z, dtype=np.float64)
    e64 = np.asarray(codebook, dtype=np.float64)
    scale = np.linalg.norm(z64, axis=1) * np.linalg.norm(e64, axis=1).max()
    return np.asarray(margin) > rel_tol * scale
