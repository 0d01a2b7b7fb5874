"""quantart_runtime.memory: the model's geometry from the manifest, the peak-memory estimate (an upper
bound of what ONNX Runtime really uses), budgets, and a request at the computed max side under a hard
address-space limit (RLIMIT_AS in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantart_runtime.memory import Geometry, SizePolicy, parse_budget, resolve_budget

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def _manifest(model_dir) -> dict:
    return json.loads((Path(model_dir) / "manifest.json").read_text())


def test_geometry_is_exported_and_older_manifests_fall_back(model_dir):
    manifest = _manifest(model_dir)
    assert isinstance(manifest.get("geometry"), dict), "quantart-export writes the geometry field"
    geo = Geometry.from_manifest(manifest)
    dd = manifest["architecture"]["ddconfig"]
    assert [lv.stride for lv in geo.levels] == [2 ** i for i in range(len(dd["ch_mult"]))]
    assert geo.levels[-1].stride == manifest["latent_stride"]
    # tiny_stage2 attends at resolution 128 of 256 (stride 2) and, as every VQGAN, at the latent
    assert [lv.attention for lv in geo.levels] == [False, True, True]
    older = {k: v for k, v in manifest.items() if k != "geometry"}
    assert Geometry.from_manifest(older) == geo
    bare = {k: v for k, v in older.items() if k != "architecture"}
    guess = Geometry.from_manifest(bare)       # nothing to go on: attention everywhere, wide channels
    assert all(lv.attention for lv in guess.levels)
    assert guess.peak_bytes(256, 256, 1, 256) >= geo.peak_bytes(256, 256, 1, 256)


def test_estimate_grows_with_the_square_of_the_tokens_and_the_batch(model_dir):
    geo = Geometry.from_manifest(_manifest(model_dir))
    small, double = geo.peak_bytes(128, 128, 1, 64), geo.peak_bytes(256, 256, 1, 64)
    assert double > 10 * small            # 4x the pixels, ~16x the attention scores
    assert geo.peak_bytes(128, 128, 4, 64) == 4 * small


def test_policy_max_side_fit_and_batch(model_dir):
    geo = Geometry.from_manifest(_manifest(model_dir))
    policy = SizePolicy(geo, 256 << 20)
    side = policy.max_side()
    assert side % geo.latent_stride == 0 and side > 0
    assert policy.fits(side, side) and not policy.fits(side + geo.latent_stride, side + geo.latent_stride)
    h, w = policy.fit(1600, 1600)
    assert policy.fits(h, w) and h == w and h <= side + geo.latent_stride
    h, w = policy.fit(16, 5000)             # very wide: the aspect ratio is kept
    assert policy.fits(h, w) and abs(w / h - 5000 / 16) < 5000 / 16 * 0.1
    assert policy.fit(32, 40) == (32, 40)
    assert policy.max_batch(side, side) == 1 and policy.max_batch(32, 32) > 8
    assert SizePolicy(geo, 4 * GiB).max_side() > side


def test_budget_parsing(monkeypatch):
    assert parse_budget("6G") == 6 * GiB and parse_budget("512M") == 512 << 20 and parse_budget(2 * GiB) == 2 * GiB
    assert 0 < parse_budget("0.25") <= parse_budget("0.5")
    for bad in ("lots", "-1G", "0", "1.5", "12", True):
        with pytest.raises(ValueError):
            parse_budget(bad)
    monkeypatch.setenv("QUANTART_MEMORY_BUDGET", "300M")
    assert resolve_budget() == 300 << 20 and resolve_budget("1G") == GiB
    monkeypatch.delenv("QUANTART_MEMORY_BUDGET")
    assert resolve_budget() > 0


def test_stylizer_refuses_what_the_budget_cannot_hold(stylizer):
    import numpy as np

    from quantart_runtime.errors import ImageTooLarge

    before = stylizer.size_policy
    try:
        stylizer.set_memory_budget("64M")
        code = stylizer.encode_style(np.full((40, 40, 3), 128, np.uint8), size=32)
        side = stylizer.size_policy.max_side(1, int(np.prod(code.latent.shape[2:])))
        with pytest.raises(ImageTooLarge, match="memory budget"):   # untiled; "auto" would stream it
            stylizer.stylize(np.zeros((side * 2, side * 2, 3), np.uint8), code, streaming="never")
        assert stylizer.default_batch_size(side, side) == 1
    finally:
        stylizer.size_policy = before


_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from quantart_runtime import Stylizer
    from quantart_runtime.core import StylizeCore
    from quantart_runtime.errors import ImageTooLarge
    from quantart_runtime.memory import _vm_size

    model, headroom = sys.argv[1], int(sys.argv[2])
    st = Stylizer.load(model, backend="onnxruntime", providers=["CPUExecutionProvider"], intra_op_threads=1,
                       fused_attention=False)   # the standard estimate (fused: test_attention_fusion.py)
    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))     # the host "cannot hold" more than this
    st.set_memory_budget(None)                                 # the default budget, seen from here: half
    core = StylizeCore(st, np.full((48, 48, 3), 100, np.uint8), style_size=32,   # default budget: half
                       streaming="never")   # the untiled rule (streaming: tests/test_streaming.py)
    tokens = core.style_tokens()
    side = st.size_policy.max_side(1, tokens)
    rng = np.random.default_rng(0)
    out = st.stylize(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), core.code)
    refused = False
    try:
        st.stylize(np.zeros((2 * side, 2 * side, 3), np.uint8), core.code, streaming="never")
    except ImageTooLarge:
        refused = True
    prepared = core.prepare(rng.integers(0, 256, (3 * side, 3 * side, 3), dtype=np.uint8))
    fitted = core.stylize_many([prepared.image])[0]
    print(json.dumps({"side": side, "budget": st.size_policy.budget, "limit": limit, "out": list(out.shape),
                      "refused": refused, "fitted": list(fitted.shape) if hasattr(fitted, "shape") else repr(fitted)}))
""")


def test_request_at_the_computed_max_side_runs_under_a_memory_limit(model_dir, tmp_path):
    """RLIMIT_AS = what the loaded process maps now + 1.5 GiB: the default budget (half the headroom)
    gives a max side; a request at exactly that side runs, twice that side is refused untiled (not an
    allocation failure), and three times that side is downscaled by a core that does not stream."""
    script = tmp_path / "under_limit.py"
    script.write_text(_UNDER_LIMIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("QUANTART_MEMORY_BUDGET", None)
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(int(1.5 * GiB))],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    side = result["side"]
    assert side >= 64 and result["budget"] <= 0.8 * GiB
    assert result["out"] == [side, side, 3]
    assert result["refused"]
    assert result["fitted"][2] == 3 and max(result["fitted"][:2]) <= side + 4
