"""The Triton nearest-code kernel, run on CPU through Triton's interpreter, against the float64 oracle.

TRITON_INTERPRET=1 replaces @triton.jit process-wide, so the kernel runs in a child process (this
file run as a script) and the pytest process stays clean. The child writes one JSON record per case.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

# (name, N, K, D, dtype, ratio, tile config or None): N never a multiple of the 64-row tile.
RANDOM_CASES = [
    ("k1_d4_fp32", 37, 1, 4, "fp32", 1.0, None),
    ("k7_d33_fp32", 100, 7, 33, "fp32", 1.0, None),
    ("k16384_d8_fp32", 65, 16384, 8, "fp32", 1.0, None),
    ("k1024_d512_fp32", 19, 1024, 512, "fp32", 1.0, None),
    ("k1000_d256_fp32", 130, 1000, 256, "fp32", 1.0, None),
    ("k300_d64_fp16", 130, 300, 64, "fp16", 1.0, None),
    ("k16384_d16_fp16", 33, 16384, 16, "fp16", 1.0, None),
    ("k1024_d256_fp16", 70, 1024, 256, "fp16", 1.0, None),
    ("small_tiles_fp32", 53, 211, 40, "fp32", 1.0, (16, 16, 16)),
    ("blend_fp32", 77, 500, 48, "fp32", 0.3, None),
    ("blend_fp16", 77, 500, 48, "fp16", 0.7, None),
]


def _child(out_path):
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from quantart_runtime.kernels import nearest_code as nc

    tdt = {"fp32": torch.float32, "fp16": torch.float16}
    rng = np.random.default_rng(1234)
    records = {}

    def run(z_np, e_np, dtype, ratio=1.0, cfg=None):
        z = torch.from_numpy(np.ascontiguousarray(z_np, dtype=np.float32)).to(tdt[dtype])
        e = torch.from_numpy(np.ascontiguousarray(e_np, dtype=np.float32)).to(tdt[dtype])
        esq = (e.float() * e.float()).sum(1)
        idx = torch.full((z.shape[0],), -1, dtype=torch.int32)
        codes = torch.full(tuple(z.shape), float("nan"), dtype=tdt[dtype])
        config = nc.TileConfig(*cfg) if cfg else None
        nc.launch(z, e, esq, idx, codes, ratio=ratio, config=config)
        return z.float().numpy(), e, idx.numpy().astype(np.int64), codes

    for name, n, k, d, dtype, ratio, cfg in RANDOM_CASES:
        t0 = time.time()
        # Codebook norms vary so that ‖e‖² matters, latents are not centred on the codebook.
        e_np = rng.standard_normal((k, d)) * rng.uniform(0.5, 2.0, (k, 1))
        z_np = rng.standard_normal((n, d)) * 1.5 + 0.2
        z, e, idx, codes = run(z_np, e_np, dtype, ratio, cfg)
        e64 = e.float().numpy().astype(np.float64)
        ref_idx, ref_codes, margin = nc.nearest_code_reference(z, e64, ratio=ratio, return_margin=True)
        decisive = nc.decisive_rows(z, e64, margin)
        rec = {"n": n, "in_range": bool(((idx >= 0) & (idx < k)).all()),
               "decisive": int(decisive.sum()),
               "mismatch": int((idx[decisive] != ref_idx[decisive]).sum())}
        if ratio == 1.0:
            rec["codes_exact"] = bool(torch.equal(codes, e[torch.from_numpy(idx)]))
        else:
            want = ratio * e64[idx] + (1.0 - ratio) * z.astype(np.float64)
            got = codes.float().numpy().astype(np.float64)
            # Error measured in ulps of the terms' magnitude (the blend may cancel).
            scale = np.abs(ratio * e64[idx]) + np.abs((1.0 - ratio) * z)
            ulp = np.spacing(scale.astype(np.float16 if dtype == "fp16" else np.float32)).astype(np.float64)
            rec["blend_max_ulps"] = float(np.max(np.abs(got - want) / ulp))
        rec["seconds"] = round(time.time() - t0, 2)
        records[name] = rec

    # Exact ties: duplicated rows (within a tile and 2 tiles apart) and midpoints of two codes.
    d = 12
    e_np = rng.integers(-4, 5, (300, d)).astype(np.float64)
    e_np[200] = e_np[5]          # other tile, same row: index 5 must win
    e_np[9] = e_np[7]            # same tile: index 7 must win
    e_np[150] = e_np[40] + 2.0   # midpoint of 40 and 150 is exactly (e40 + 1)
    z_np = np.stack([e_np[5], e_np[200], e_np[7], e_np[9], e_np[40] + 1.0] * 9)[:43]
    for dtype in ("fp32", "fp16"):
        z, e, idx, codes = run(z_np, e_np, dtype)
        ref_idx, _, margin = nc.nearest_code_reference(z, e.float().numpy(), return_margin=True)
        records[f"ties_{dtype}"] = {"idx": idx.tolist(), "ref": ref_idx.tolist(),
                                    "codes_exact": bool(torch.equal(codes, e[torch.from_numpy(idx)]))}

    # Near ties: z on the bisector of two codes, nudged by tiny amounts either way.
    e_np = rng.standard_normal((64, 32))
    a, b = e_np[3], e_np[50]
    nudges = np.linspace(-1e-3, 1e-3, 41)
    z_np = (a + b)[None, :] / 2 + nudges[:, None] * (a - b)[None, :]
    for dtype in ("fp32", "fp16"):
        z, e, idx, codes = run(z_np, e_np, dtype)
        e64 = e.float().numpy().astype(np.float64)
        ref_idx, _, margin = nc.nearest_code_reference(z, e64, return_margin=True)
        decisive = nc.decisive_rows(z, e64, margin)
        records[f"near_ties_{dtype}"] = {
            "decisive": int(decisive.sum()), "undecided": int((~decisive).sum()),
            "mismatch": int((idx[decisive] != ref_idx[decisive]).sum()),
            "undecided_ok": bool(np.isin(idx[~decisive], [3, 50]).all()),
            "codes_exact": bool(torch.equal(codes, e[torch.from_numpy(idx)]))}

    with open(out_path, "w") as f:
        json.dump(records, f)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernel") / "results.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", [c[0] for c in RANDOM_CASES])
def test_random_shapes_match_oracle(results, case):
    rec = results[case]
    assert rec["in_range"]
    # Random data is almost never near-tied: the acceptance rule must actually cover the rows.
    assert rec["decisive"] >= rec["n"] * 0.95
    assert rec["mismatch"] == 0
    if "codes_exact" in rec:
        assert rec["codes_exact"]
    else:
        assert rec["blend_max_ulps"] <= 4.0


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_exact_ties_take_lowest_index(results, dtype):
    rec = results[f"ties_{dtype}"]
    assert rec["idx"] == rec["ref"]          # numpy argmin: first minimum
    assert set(rec["idx"]) == {5, 7, 40}
    assert rec["codes_exact"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_near_ties(results, dtype):
    rec = results[f"near_ties_{dtype}"]
    assert rec["decisive"] > 0 and rec["mismatch"] == 0
    assert rec["undecided_ok"] and rec["codes_exact"]


def test_reference_oracle_and_margin():
    from quantart_runtime.kernels.nearest_code import decisive_rows, nearest_code_reference

    e = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    z = np.array([[1.0, 0.0], [1.9, 0.1], [0.1, 2.0]])
    idx, codes, margin = nearest_code_reference(z, e, return_margin=True)
    assert idx.tolist() == [0, 1, 2]            # exact tie between 0 and 1 -> 0
    assert margin[0] == 0.0 and np.all(margin[1:] > 0)
    np.testing.assert_array_equal(codes, e[idx])
    assert decisive_rows(z, e, margin).tolist() == [False, True, True]
    _, blended = nearest_code_reference(z, e, ratio=0.25)
    np.testing.assert_allclose(blended, 0.25 * e[idx] + 0.75 * z)
    with pytest.raises(ValueError, match="need z"):
        nearest_code_reference(z, e[:, :1])


def test_launch_rejects_bad_input_with_one_line():
    torch = pytest.importorskip("torch")
    from quantart_runtime.kernels.nearest_code import launch

    z, e = torch.zeros(5, 8), torch.zeros(3, 8)
    esq, idx, codes = torch.zeros(3), torch.zeros(5, dtype=torch.int32), torch.zeros(5, 8)
    bad = [
        ((z, e.half(), esq, idx, codes), "must both be fp32 or both fp16"),
        ((z, torch.zeros(3, 7), esq, idx, codes), "need z"),
        ((z, e, torch.zeros(4), idx, codes), "codebook_sqnorm"),
        ((z, e, esq, idx.long(), codes), "indices must be int32"),
        ((z, e, esq, idx, torch.zeros(5, 8).half()), "codes must be fp32"),
    ]
    for args, msg in bad:
        with pytest.raises(ValueError, match=msg) as err:
            launch(*args)
        assert "\n" not in str(err.value)
    zt = torch.zeros(8, 5).t()
    with pytest.raises(ValueError, match="contiguous"):
        launch(zt, e, esq, idx, codes)


def test_runtime_module_imports_without_triton_or_torch():
    code = ("import sys; sys.modules['triton'] = None; sys.modules['torch'] = None\n"
            "from quantart_runtime.kernels import nearest_code as nc\n"
            "import numpy as np\n"
            "i, c = nc.nearest_code_reference(np.eye(3), np.eye(3)[::-1])\n"
            "assert i.tolist() == [2, 1, 0]\n"
            "try:\n    nc.nearest_code_kernel\nexcept ImportError:\n    print('lazy-ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lazy-ok" in proc.stdout


if __name__ == "__main__":
    _child(sys.argv[1])
