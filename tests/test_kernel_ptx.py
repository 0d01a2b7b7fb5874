"""Ahead-of-time PTX for the nearest-code kernel, compiled without a GPU (sm_80 .. sm_120, FP32/FP16).

Compiled in a child process with TRITON_INTERPRET unset (the interpreter replaces @triton.jit process-
wide) and a private Triton cache, so this really compiles.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ARCHS = (80, 86, 89, 90, 100, 120)
DTYPES = ("fp32", "fp16")
EXTRA_ARCHS = (103, 110, 121)       # the rest of SUPPORTED_ARCHS, FP16 only (the tensor-core path)


def _child(out_dir):
    from quantart_runtime.kernels.nearest_code import compile_ptx, ptxas_path

    meta = {}
    for arch in ARCHS:
        for dtype in DTYPES:
            name, ptx, lp = compile_ptx(f"sm_{arch}", dtype, 256)
            with open(os.path.join(out_dir, f"sm{arch}_{dtype}.ptx"), "w") as f:
                f.write(ptx)
            meta[f"{arch}_{dtype}"] = {"name": name, **lp.to_dict(), "grid_1000": lp.grid(1000)}
            # the stripped entry still assembles (Triton's ptxas for this arch)
            target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
            path = os.path.join(out_dir, f"sm{arch}_{dtype}.ptx")
            proc = subprocess.run([ptxas_path(arch), f"--gpu-name={target}", path, "-o", path + ".cubin"],
                                  capture_output=True, text=True)
            meta[f"{arch}_{dtype}"]["ptxas_rc"] = proc.returncode
            meta[f"{arch}_{dtype}"]["ptxas_err"] = proc.stderr[-500:]
    for arch in EXTRA_ARCHS:
        name, ptx, lp = compile_ptx(arch, "fp16", 256)
        meta[f"{arch}_fp16"] = {"name": name, **lp.to_dict(), "ptx": ptx}
    from quantart_runtime.kernels.nearest_code import ptx_version_for_driver, ptxas_ptx_version

    meta["driver_ptx"] = {f"{v}/{a}": ptx_version_for_driver(v, a) for v in (12040, 12080, 13000, 13020)
                          for a in (80, 90)}
    meta["ptxas_isa"] = {str(a): ptxas_ptx_version(a) for a in (80, 90)}
    _, ptx84, _ = compile_ptx(90, "fp32", 256, ptx_version=ptx_version_for_driver(12040, 90))
    meta["ptx84_version_line"] = re.search(r"^\.version.*$", ptx84, re.M).group(0)
    # A driver newer than Triton's ptxas (CUDA 13.2 driver, sm_80): asked for the driver's ISA, the
    # PTX comes out at ptxas's, and that ptxas assembles it (here, explicitly, besides Triton's own run).
    for arch in (80, 90):
        _, ptx_new, _ = compile_ptx(arch, "fp16", 64, ptx_version=92)
        path = os.path.join(out_dir, f"new_driver_sm{arch}.ptx")
        with open(path, "w") as f:
            f.write(ptx_new)
        target = re.search(r"^\.target\s+(sm_\w+)", ptx_new, re.M).group(1)      # sm_90a on Hopper
        proc = subprocess.run([ptxas_path(arch), f"--gpu-name={target}", path, "-o", path + ".cubin"],
                              capture_output=True, text=True)
        meta[f"new_driver_{arch}"] = {"version_line": re.search(r"^\.version.*$", ptx_new, re.M).group(0),
                                      "ptxas_rc": proc.returncode, "ptxas_err": proc.stderr[-500:]}
    try:
        compile_ptx("sm_75", "fp32", 256)
    except ValueError as e:
        meta["bad_arch"] = f"{type(e).__name__}: {e}"
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("ptx")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(out / "triton_cache")
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / "meta.json").read_text())
    return out, meta


def _entry_params(ptx, name):
    m = re.search(r"\.entry\s+" + name + r"\s*\((.*?)\)", ptx, re.S)
    assert m, "no .entry in PTX"
    return re.findall(r"\.param\s+(\.\w+)", m.group(1))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ptx_for_arch(compiled, arch, dtype):
    out, meta = compiled
    ptx = (out / f"sm{arch}_{dtype}.ptx").read_text()
    m = meta[f"{arch}_{dtype}"]
    assert m["name"] == "nearest_code_kernel"
    assert re.search(rf"^\.target\s+sm_{arch}a?\b", ptx, re.M)
    # TensorRT's AOT ABI, exactly: 3 input pointers, 2 int32 scalars, 2 output pointers. Triton's two
    # trailing scratch pointers are stripped (TensorRT passes only the declared arguments); ratio is
    # specialised away, no float parameter is left.
    types = _entry_params(ptx, m["name"])
    assert types == [".u64", ".u64", ".u64", ".u32", ".u32", ".u64", ".u64"]
    assert m["hidden_params"] == 2
    assert m["ptxas_rc"] == 0, m["ptxas_err"]
    assert list(m["params"]) == ["z_ptr", "e_ptr", "esq_ptr", "n_rows", "n_codes", "idx_ptr", "codes_ptr"]
    assert m["threads_per_block"] == 32 * m["num_warps"]
    assert 0 < m["shared_mem"] <= 48 * 1024
    assert m["grid_1000"] == [-(-1000 // m["block_n"]), 1, 1]
    assert m["embed_dim"] == 256 and m["arch"] == arch and m["dtype"] == dtype
    # FP32 accumulation; no TF32 anywhere.
    assert "tf32" not in ptx
    if dtype == "fp16":
        # mma.sync (sm_80/86/89/120), wgmma (sm_90), tcgen05.mma with an FP32 accumulator (sm_100)
        assert re.search(r"(mma\.sync\.aligned\.\S*\.f32\.f16\.f16\.f32|wgmma\.\S*\.f32\.f16\.f16"
                         r"|tcgen05\.mma\.cta_group::1\.kind::f16)", ptx)
    else:
        assert "fma.rn.f32" in ptx and not re.search(r"\bmma\.", ptx)
    # The index output is stored as 32-bit integers.
    assert re.search(r"st\.global(\.v\d)?\.b32", ptx)


def test_ptx_isa_follows_the_driver_capped_by_ptxas(compiled):
    _, meta = compiled
    isa80, isa90 = meta["ptxas_isa"]["80"], meta["ptxas_isa"]["90"]
    driver = {12040: 84, 12080: 87, 13000: 90, 13020: 92}
    for v, want in driver.items():
        assert meta["driver_ptx"][f"{v}/80"] == min(want, isa80)
        assert meta["driver_ptx"][f"{v}/90"] == min(want, isa90)
    assert meta["ptx84_version_line"].split() == [".version", "8.4"]


def test_driver_isa_above_ptxas_still_assembles(compiled):
    """Triton 3.9 at sm_80 with a CUDA 13 driver asked for PTX 9.x, which its ptxas
    (12.9: ISA 8.8) refuses. compile_ptx caps the ISA, and the PTX assembles."""
    _, meta = compiled
    for arch in ("80", "90"):
        got = meta[f"new_driver_{arch}"]
        isa = min(92, meta["ptxas_isa"][arch])
        assert got["version_line"].split() == [".version", f"{isa // 10}.{isa % 10}"]
        assert got["ptxas_rc"] == 0, got["ptxas_err"]


def test_isa_table_matches_triton():
    from triton.backends.nvidia.compiler import ptx_get_version

    from quantart_runtime.kernels.nearest_code import ptx_isa_for_cuda

    for version in ("11.8", "12.0", "12.4", "12.6", "12.9", "13.0", "13.4", "14.1"):
        assert ptx_isa_for_cuda(version) == ptx_get_version(version), version
    with pytest.raises(ValueError, match="12.4"):
        ptx_isa_for_cuda("twelve")


@pytest.mark.parametrize("field, value", [("launch_pdl", True), ("launch_cooperative_grid", True),
                                          ("tmem_size", 1024), ("tensordesc_meta", [{"x": 1}]),
                                          ("global_scratch_size", 64), ("num_ctas", 2), ("shared", 64 * 1024),
                                          ("launch_pdl", None)])
def test_launch_metadata_checks(field, value):
    """What a TensorRT AOT launch cannot provide is refused, and so is a missing field (None here
    means: the field is absent, as from an untested Triton)."""
    from types import SimpleNamespace

    from quantart_runtime.kernels.nearest_code import check_launch_metadata

    good = dict(global_scratch_size=0, profile_scratch_size=0, num_ctas=1, launch_cooperative_grid=False,
                launch_pdl=False, tmem_size=None, tensordesc_meta=[], shared=8192)
    check_launch_metadata(SimpleNamespace(**{**good, "tmem_size": 64}))     # in-kernel tcgen05 alloc (sm_100)
    check_launch_metadata(SimpleNamespace(**good))
    bad = dict(good)
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    with pytest.raises(RuntimeError, match=field):
        check_launch_metadata(SimpleNamespace(**bad))


@pytest.mark.parametrize("arch", EXTRA_ARCHS)
def test_other_blackwell_archs(compiled, arch):
    """sm_103 / sm_110 / sm_121 go through Triton's ptxas-blackwell like sm_100 / sm_120."""
    _, meta = compiled
    m = meta[f"{arch}_fp16"]
    assert re.search(rf"^\.target\s+sm_{arch}a?\b", m["ptx"], re.M)
    assert len(_entry_params(m["ptx"], m["name"])) == 7


def test_bad_arch_is_one_line(compiled):
    _, meta = compiled
    msg = meta["bad_arch"]
    assert msg.startswith("UnsupportedArch: unsupported arch 'sm_75'") and "\n" not in msg
    assert "sm_90 (H100/H200/GH200)" in msg and "sm_120 (RTX 50" in msg


def test_strip_refuses_a_referenced_parameter():
    from quantart_runtime.kernels.nearest_code import strip_unused_params

    ptx = (".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u64 k_param_1,\n\t.param .u64 k_param_2\n)\n"
           "{\n\tld.param.u64 %rd1, [k_param_0];\n\tld.param.u64 %rd2, [k_param_2];\n}\n")
    with pytest.raises(RuntimeError, match="k_param_2 is read"):
        strip_unused_params(ptx, "k", 1)
    out, n = strip_unused_params(ptx.replace("[k_param_2]", "[k_param_0]"), "k", 1)
    assert n == 2 and _entry_params(out, "k") == [".u64"] and "k_param_1" not in out


if __name__ == "__main__":
    _child(sys.argv[1])
