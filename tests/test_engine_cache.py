"""Engine cache (TensorRT backend): keys, invalidation, atomic writes and the cross-process build lock.

The builder and loader are injected callables, so no TensorRT is involved; the key fields the
TensorRT loader fills in come from ``trt_engine.cache_fields``, a pure function (tested here too).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from quantart_runtime.engine_cache import KEY_FIELDS, EngineCache, cache_key

FIELDS = {"graph_sha256": "ab" * 32, "tensorrt_version": "10.13.0", "gpu_name": "NVIDIA H200",
          "compute_capability": "9.0", "cuda_driver_version": 12080, "ptx_version": 87, "triton_version": "3.9.0",
          "profile": {"min": [1, 3, 16, 16], "opt": [1, 3, 256, 256], "max": [32, 3, 1024, 1024]},
          "workspace_bytes": 4 << 30, "builder_flags": ["STRONGLY_TYPED", "no-TF32"]}


class Builder:
    def __init__(self, payload=b"PLAN-1"):
        self.calls = 0
        self.payload = payload

    def __call__(self):
        self.calls += 1
        return self.payload


def load_ok(plan):
    return ("engine", plan)


def test_key_depends_on_every_field():
    base = cache_key(FIELDS)
    assert base == cache_key(dict(reversed(list(FIELDS.items()))))       # order does not matter
    changes = {"graph_sha256": "cd" * 32, "tensorrt_version": "11.0.0", "gpu_name": "NVIDIA A100",
               "compute_capability": "8.0", "cuda_driver_version": 13000, "ptx_version": 88,
               "triton_version": "3.10.0", "profile": {**FIELDS["profile"], "max": [16, 3, 1024, 1024]},
               "workspace_bytes": 1 << 30, "builder_flags": ["STRONGLY_TYPED"]}
    assert set(changes) == set(KEY_FIELDS)
    keys = {cache_key({**FIELDS, k: v}) for k, v in changes.items()}
    assert base not in keys and len(keys) == len(changes)
    for field in KEY_FIELDS:                                              # every one is required
        with pytest.raises(ValueError, match=f"missing {field}"):
            cache_key({k: v for k, v in FIELDS.items() if k != field})
    assert cache_key({**FIELDS, "plugin": "x"}) != base                   # extra fields count too
    with pytest.raises(ValueError, match="missing gpu_name"):
        cache_key({k: v for k, v in FIELDS.items() if k != "gpu_name"})


def test_build_then_hit(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    assert cache.get_or_build(FIELDS, build, load_ok) == (("engine", b"PLAN-1"), "built")
    assert cache.get_or_build(FIELDS, build, load_ok) == (("engine", b"PLAN-1"), "hit")
    assert build.calls == 1
    # a different GPU gets its own entry
    assert cache.get_or_build({**FIELDS, "gpu_name": "NVIDIA L4"}, Builder(b"P2"), load_ok)[1] == "built"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("damage", ["flip_plan", "truncate_plan", "garbage_meta", "other_fields", "no_meta"])
def test_corrupt_entries_are_rebuilt(tmp_path, damage):
    cache = EngineCache(tmp_path)
    cache.get_or_build(FIELDS, Builder(), load_ok)
    plan_p, meta_p, _ = cache.paths(cache_key(FIELDS))
    if damage == "flip_plan":
        data = bytearray(plan_p.read_bytes())
        data[0] ^= 0xFF
        plan_p.write_bytes(bytes(data))
    elif damage == "truncate_plan":
        plan_p.write_bytes(plan_p.read_bytes()[:3])
    elif damage == "garbage_meta":
        meta_p.write_text("{not json")
    elif damage == "other_fields":
        meta = json.loads(meta_p.read_text())
        meta["fields"]["tensorrt_version"] = "9.0"
        meta_p.write_text(json.dumps(meta))
    else:
        meta_p.unlink()
    build = Builder(b"PLAN-2")
    assert cache.get_or_build(FIELDS, build, load_ok) == (("engine", b"PLAN-2"), "rebuilt")
    assert build.calls == 1 and plan_p.read_bytes() == b"PLAN-2"
    assert cache.get_or_build(FIELDS, build, load_ok)[1] == "hit"


def test_incompatible_plan_is_rebuilt(tmp_path):
    cache = EngineCache(tmp_path)
    cache.get_or_build(FIELDS, Builder(b"OLD"), load_ok)

    def load_new_only(plan):      # what TensorRT does with a plan it cannot deserialize: None
        return ("engine", plan) if plan == b"NEW" else None

    assert cache.get_or_build(FIELDS, Builder(b"NEW"), load_new_only) == (("engine", b"NEW"), "rebuilt")

    def load_raises(plan):
        raise RuntimeError("deserialize failed")

    with pytest.raises(RuntimeError, match="could not be loaded"):
        EngineCache(tmp_path / "x").get_or_build(FIELDS, Builder(), lambda plan: None)
    with pytest.raises(RuntimeError, match="deserialize failed"):
        cache.get_or_build({**FIELDS, "gpu_name": "g"}, Builder(), load_raises)


def test_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def boom():
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.get_or_build(FIELDS, boom, load_ok)
    plan_p, meta_p, lock_p = cache.paths(cache_key(FIELDS))
    assert not plan_p.exists() and not meta_p.exists()
    with pytest.raises(RuntimeError, match="no plan"):
        cache.get_or_build(FIELDS, lambda: b"", load_ok)
    assert cache.get_or_build(FIELDS, Builder(), load_ok)[1] == "built"   # lock was released


def test_loader_fields_cover_the_key():
    """The TensorRT loader's key (cache_fields) has every required field, and a change in PTX ISA,
    driver, workspace or builder flags gives another entry (a plan with too new a PTX is not reused)."""
    from quantart_runtime.backends.trt_engine import cache_fields, source_hash

    base = dict(graph="sga", graph_sha256="ab" * 32, precision="fp16", tensorrt_version="10.13.0",
                gpu_name="NVIDIA H200", compute_capability=(9, 0), driver_version=12080, ptx_version=87,
                profile={"z": [[1, 8, 1, 1], [1, 8, 16, 16], [8, 8, 64, 64]]}, workspace_bytes=4 << 30,
                builder_flags=["no-TF32", "STRONGLY_TYPED"])
    fields = cache_fields(**base)
    assert set(KEY_FIELDS) <= set(fields)
    assert fields["compute_capability"] == "9.0" and fields["builder_flags"] == ["STRONGLY_TYPED", "no-TF32"]
    assert fields["plugin_source"] == source_hash() and fields["triton_version"]
    key = cache_key(fields)
    for change in ({"ptx_version": 88}, {"driver_version": 13000}, {"workspace_bytes": 1 << 30},
                   {"builder_flags": ["STRONGLY_TYPED"]}, {"precision": "fp32"}, {"graph": "decoder"}):
        assert cache_key(cache_fields(**{**base, **change})) != key, change


def test_blobs(tmp_path):
    cache = EngineCache(tmp_path)
    assert cache.read_blob("timing.cache") is None
    cache.write_blob("timing.cache", b"T1")
    cache.write_blob("timing.cache", b"T2")
    assert cache.read_blob("timing.cache") == b"T2"


WORKER = textwrap.dedent("""
    import json, os, sys, time
    from quantart_runtime.engine_cache import EngineCache
    cache_dir, log, fields = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    def build():
        with open(log, "a") as f:
            f.write(f"start {os.getpid()} {time.time()}\\n")
        time.sleep(1.0)
        with open(log, "a") as f:
            f.write(f"end {os.getpid()} {time.time()}\\n")
        return f"PLAN-{os.getpid()}".encode()
    obj, status = EngineCache(cache_dir).get_or_build(fields, build, lambda p: p.decode())
    print(json.dumps({"status": status, "plan": obj}))
""")


def test_concurrent_builders_are_serialised(tmp_path):
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(log), json.dumps(FIELDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["built", "hit", "hit", "hit"]
    assert len({r["plan"] for r in results}) == 1                      # everyone got the one plan
    events = log.read_text().split()
    assert events.count("start") == 1 and events.count("end") == 1


def test_waiters_block_until_the_builder_is_done(tmp_path):
    """Two builds of different keys do not wait on each other; the same key does."""
    log = tmp_path / "log.txt"
    other = {**FIELDS, "gpu_name": "other"}
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "cache"), str(log), json.dumps(f)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in (FIELDS, other)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    lines = [line.split() for line in log.read_text().splitlines()]
    starts = sorted(float(t) for kind, _, t in lines if kind == "start")
    ends = sorted(float(t) for kind, _, t in lines if kind == "end")
    assert len(starts) == 2 and starts[1] < ends[0]                   # overlapped: different locks
    assert time.time() - t0 < 60


def test_cache_key_needs_neither_triton_nor_onnx():
    """A cache hit must not import Triton (nor onnx): the key's PTX ISA comes from
    the driver version and Triton's ptxas binary, Triton's version from package metadata."""
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import json, sys
        from quantart_runtime.backends.trt_engine import cache_fields
        from quantart_runtime.kernels.nearest_code import ptx_version_for_driver
        ptx = ptx_version_for_driver(13020, 80)
        fields = cache_fields(graph="sga", graph_sha256="ab" * 32, precision="fp16", tensorrt_version="10.13.0",
                              gpu_name="NVIDIA A100", compute_capability=(8, 0), driver_version=13020,
                              ptx_version=ptx, profile={}, workspace_bytes=1, builder_flags=[])
        print(json.dumps({"ptx": ptx, "triton_version": fields["triton_version"],
                          "imported": sorted(m for m in ("triton", "onnx", "tensorrt", "torch") if m in sys.modules)}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["imported"] == [] and got["triton_version"] != "none"
    assert got["ptx"] <= 92                              # capped by Triton's ptxas for sm_80
