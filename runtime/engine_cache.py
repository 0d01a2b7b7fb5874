"""On-disk cache of serialized engines (TensorRT plans), safe for concurrent builders.

An entry is keyed by everything that makes a plan reusable (``KEY_FIELDS``, all required): the graph's
sha256, the TensorRT version, the GPU name and compute capability, the CUDA driver version, the PTX
ISA and Triton version of the embedded plugin kernel, the optimization profile, the workspace size
and the builder flags (plus any extra fields the caller adds, e.g. the plugin's source hash; see
``trt_engine.cache_fields``). Layout under the cache directory, per key:

    <key>.plan   the serialized engine
    <key>.json   metadata: the key fields and the plan's sha256 (written last: it commits the entry)
    <key>.lock   file lock held while building

Both files are written atomically (``quantart_runtime.util.write_bytes``). A plan whose
sha256 does not match, whose metadata disagrees with the key, or that the caller's loader rejects
(e.g. TensorRT cannot deserialize it: another version) is rebuilt. The builder and loader are
parameters, so the cache itself needs neither TensorRT nor a GPU.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from .util.atomic import write_bytes
from .util.digest import sha256_bytes

CACHE_FORMAT = 2
KEY_FIELDS = ("graph_sha256", "tensorrt_version", "gpu_name", "compute_capability", "cuda_driver_version",
              "ptx_version", "triton_version", "profile", "workspace_bytes", "builder_flags")


def cache_key(fields: dict) -> str:
    """sha256 over the canonical JSON of the key fields (all of KEY_FIELDS are required)."""
    missing = [f for f in KEY_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"engine cache key is missing {', '.join(missing)}")
    blob = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(blob.encode())


def _write(path, data: bytes) -> None:
    write_bytes(path, data, fsync=True)


class EngineCache:
    """Serialized plans in ``directory`` (created if missing), keyed by ``cache_key(fields)``.

    Args:
        directory: the cache directory.
        lock_timeout: seconds to wait for another process building the same key
            (``filelock.Timeout`` after that).
    """

    def __init__(self, directory, lock_timeout: float = 1800.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """(plan, metadata, lock) paths of ``key``."""
        return self.dir / f"{key}.plan", self.dir / f"{key}.json", self.dir / f"{key}.lock"

    def _read(self, key: str, fields: dict) -> bytes | None:
        plan_p, meta_p, _ = self.paths(key)
        try:
            meta = json.loads(meta_p.read_text())
            plan = plan_p.read_bytes()
        except (OSError, ValueError):
            return None
        expected = json.loads(json.dumps(fields, sort_keys=True, default=str))
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("fields") != expected:
            return None
        if meta.get("sha256") != sha256_bytes(plan) or meta.get("size") != len(plan):
            return None
        return plan

    def _write(self, key: str, fields: dict, plan: bytes) -> None:
        plan_p, meta_p, _ = self.paths(key)
        meta = {"format": CACHE_FORMAT, "fields": json.loads(json.dumps(fields, sort_keys=True, default=str)),
                "sha256": sha256_bytes(plan), "size": len(plan)}
        _write(plan_p, plan)
        _write(meta_p, json.dumps(meta, sort_keys=True, indent=1).encode())

    def _try_load(self, key, fields, load: Callable[[bytes], Any]):
        plan = self._read(key, fields)
        if plan is None:
            return None, False
        try:
            obj = load(plan)
        except Exception:
            obj = None
        return obj, obj is None

    def get_or_build(self, fields: dict, build: Callable[[], bytes], load: Callable[[bytes], Any]):
        """-> (loaded object, status) with status "hit", "built" or "rebuilt".

        `build()` returns the serialized plan; `load(plan)` turns it into the usable object and returns
        None (or raises) when the plan is incompatible. Only one process builds a given key at a time;
        the others wait on the lock and then load what it wrote.
        """
        key = cache_key(fields)
        obj, _ = self._try_load(key, fields, load)
        if obj is not None:
            return obj, "hit"
        _, _, lock_p = self.paths(key)
        with FileLock(str(lock_p), timeout=self.lock_timeout):
            obj, rejected = self._try_load(key, fields, load)
            if obj is not None:
                return obj, "hit"
            existed = any(p.exists() for p in self.paths(key)[:2])
            plan = build()
            if not isinstance(plan, (bytes, bytearray, memoryview)) or len(plan) == 0:
                raise RuntimeError("engine build produced no plan")
            plan = bytes(plan)
            obj = load(plan)
            if obj is None:
                raise RuntimeError("a freshly built engine could not be loaded")
            self._write(key, fields, plan)
            return obj, "rebuilt" if (existed or rejected) else "built"

    def read_blob(self, name: str) -> bytes | None:
        """Side files such as the TensorRT timing cache (keyed by the caller through `name`)."""
        try:
            return (self.dir / name).read_bytes()
        except OSError:
            return None

    def write_blob(self, name: str, data: bytes) -> None:
        """Atomically replace side file ``name`` with ``data`` (under its own lock)."""
        with FileLock(str(self.dir / f"{name}.lock"), timeout=self.lock_timeout):
            _write(self.dir / name, data)
