"""12 MP under ``quantart serve`` and ``quantart stylize-dataset``, each worker under a memory cgroup limit.

    python -m quantart_benchmarks.cluster_bounded --model DIR [--budget 3G] [--out benchmarks/results/cluster_bounded]

Issue 21 item 4 through the two cluster paths: a 4032×3024 content with a 256² style on ONNX Runtime CPU,
the service's / job's own ``memory_budget``. The process that stylizes (the Serve replica; the Ray Data
actor) is moved, once its model is loaded, into a memory cgroup (v1, needs root) whose limit is
``--over`` (default 4 GiB): only what it allocates after the move is charged, so the limit is the issue's
"≤ 4 GiB above the loaded model", enforced by the kernel (page cache of the temporary store is charged
too and reclaimed under it). Reported: the worker's peak RSS above its loaded RSS (``VmHWM`` after
``clear_refs``), the cgroup's peak charge, wall time, whether the answer / output has the full size.
Writes ``<out>.json`` and ``<out>.md``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .hardware import proc_status

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def _encode(array) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes (the service's own encoder)."""
    from quantart_runtime.cluster.http_io import encode_image

    return encode_image(array, "png")


def _find(pattern: str) -> int | None:
    """The pid of the first process whose command line holds ``pattern``."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if pattern in args:
            return int(pid)
    return None


class Cgroup:
    """A v1 memory cgroup holding one process, limit ``limit`` bytes (removed by ``close``)."""

    def __init__(self, name: str, limit: int):
        self.path = CGROUP_ROOT / name
        self.path.mkdir(exist_ok=True)
        (self.path / "memory.limit_in_bytes").write_text(str(int(limit)))
        self.limit = int(limit)

    def add(self, pid: int) -> None:
        """Move process ``pid`` into the group."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def peak(self) -> int:
        """The group's peak memory charge (bytes)."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended inside the group."""
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def close(self) -> None:
        """Move its processes back to the root group and remove it."""
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                (CGROUP_ROOT / "cgroup.procs").write_text(pid)
            self.path.rmdir()
        except OSError:
            pass


def _bound(pid: int, over: int, name: str) -> tuple[Cgroup, int]:
    """Move ``pid`` into a fresh cgroup limited to ``over`` bytes; returns (cgroup, loaded RSS), VmHWM reset."""
    loaded = proc_status("VmRSS:", pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    group = Cgroup(name, over)
    group.add(pid)
    return group, loaded


def serve_row(model_dir: str, budget: str, over: int, content, style) -> dict:
    """The 12 MP request to a one-replica service (its memory_budget ``budget``) under the cgroup."""
    import httpx
    import ray
    from ray import serve

    from quantart_runtime.cluster.batch import ray_init_options
    from quantart_runtime.cluster.serve import start_service

    from .serve_load import free_port, wait_healthy
    from .streaming import _photo

    ray.init(num_cpus=2, log_to_driver=False, **ray_init_options(None))
    group = None
    try:
        url = start_service(model_dir, host="127.0.0.1", port=free_port(), backend="onnxruntime",
                            cpus_per_replica=2, memory_budget=budget, request_timeout_s=7200,
                            max_body_bytes=256 << 20, max_pixels=4096 * 4096)
        wait_healthy(url, 600)
        sid = httpx.post(f"{url}/v1/styles", content=_encode(style), timeout=600).json()["style_id"]
        # warm: one content above the untiled budget, so the replica has its streaming runner loaded
        warm = httpx.post(f"{url}/v1/stylize", params={"style_id": sid}, content=_encode(_photo(960, 1280, 2)),
                          timeout=7200)
        assert warm.status_code == 200, warm.text
        pid = _find("ServeReplica:quantart:StylizeService")   # not the StyleRegistry replica
        group, loaded = _bound(pid, over, f"quantart_serve_{os.getpid()}")
        body = _encode(content)
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/stylize", params={"style_id": sid}, content=body, timeout=7200)
        seconds = time.perf_counter() - t0
        from PIL import Image

        shape = list(Image.open(io.BytesIO(r.content)).size[::-1]) if r.status_code == 200 else None
        return {"path": "quantart serve", "status": r.status_code, "seconds": seconds, "output_hw": shape,
                "resized_header": r.headers.get("X-Quantart-Resized"), "loaded_rss": loaded,
                "peak_rss_over_loaded": proc_status("VmHWM:", pid) - loaded, "cgroup_limit": group.limit,
                "cgroup_peak_charge": group.peak(), "cgroup_oom_kills": group.oom_kills(),
                "error": None if r.status_code == 200 else r.text[:300]}
    finally:
        if group is not None:
            group.close()
        serve.shutdown()
        ray.shutdown()


def dataset_row(model_dir: str, budget: str, over: int, content, style, loaded_guess: int) -> dict:
    """``stylize_dataset`` of one 12 MP image, one actor; the actor goes into the cgroup as it appears,
    with the limit ``loaded_guess`` (its model, as the replica measured it) + ``over``."""
    from quantart_runtime.cluster.batch import stylize_dataset

    work = Path(tempfile.mkdtemp(prefix="quantart-cluster-bounded-"))
    (work / "in").mkdir()
    (work / "in" / "photo.png").write_bytes(_encode(content))
    (work / "style.png").write_bytes(_encode(style))
    watch = {"pid": None, "group": None, "hwm": 0, "stop": False}

    def watcher():
        while not watch["stop"]:
            pid = watch["pid"] or _find("StylizeWorker")
            if pid and watch["group"] is None:
                try:
                    watch["group"], _ = _bound(pid, loaded_guess + over, f"quantart_dataset_{os.getpid()}")
                    watch["pid"] = pid
                except (OSError, KeyError):
                    pass
            if watch["pid"]:
                try:
                    watch["hwm"] = max(watch["hwm"], proc_status("VmHWM:", watch["pid"]))
                except (OSError, KeyError):
                    pass
            time.sleep(0.2)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        summary = stylize_dataset(model_dir, str(work / "style.png"), str(work / "in"), str(work / "out"),
                                  num_workers=1, cpus_per_worker=2, batch_size=1, backend="onnxruntime",
                                  memory_budget=budget, progress=False)
        seconds = time.perf_counter() - t0
        watch["stop"] = True
        thread.join()
        from PIL import Image

        outs = list((work / "out").glob("photo.*"))
        group = watch["group"]
        return {"path": "quantart stylize-dataset", "seconds": seconds, "done": summary.done,
                "failed": summary.failed, "failures": summary.failures[:3],
                "output_hw": list(Image.open(outs[0]).size[::-1]) if outs else None,
                "peak_rss": watch["hwm"], "peak_rss_over_loaded": watch["hwm"] - loaded_guess,
                "loaded_rss_assumed": loaded_guess, "cgroup_limit": group.limit if group else None,
                "cgroup_peak_charge": group.peak() if group else None,
                "cgroup_oom_kills": group.oom_kills() if group else None}
    finally:
        watch["stop"] = True
        thread.join()
        if watch["group"] is not None:
            watch["group"].close()
        shutil.rmtree(work, ignore_errors=True)


def report(rows: list, budget: str, over: int) -> str:
    """The Markdown report of the rows."""
    from quantart_runtime.verify import cpu_model

    from .hardware import hardware_info, now_utc

    hw = hardware_info()
    lines = ["# 12 MP (4032×3024) through the cluster paths, each worker under a memory cgroup", "",
             f"{now_utc()}. Machine: {cpu_model()}, {hw['usable_cpus']} CPUs, {hw['memory_gb']} GiB. Official "
             f"architecture (random weights), ONNX Runtime CPU, 256² style, memory_budget {budget}; the worker "
             f"is moved into a v1 memory cgroup once loaded, limit {over / 2**30:.1f} GiB above that "
             "(serve: after a warm streamed request; dataset: as the actor appears, limit = the replica's "
             "loaded RSS + the same).", "",
             "| path | result | output | time s | peak RSS over loaded | cgroup peak charge | OOM kills |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = r.get("status") == 200 if "status" in r else r.get("done") == 1
        lines.append(f"| {r['path']} | {'ok' if ok else 'FAILED'} | {r.get('output_hw')} | {r['seconds']:.0f} | "
                     f"{r['peak_rss_over_loaded'] / 2**30:.2f} GiB | "
                     f"{(r.get('cgroup_peak_charge') or 0) / 2**30:.2f} GiB | {r.get('cgroup_oom_kills')} |")
    lines += ["", "```", json.dumps(rows, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """The command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--budget", default="3G")
    ap.add_argument("--over", type=float, default=4.0, help="GiB the cgroup allows above the loaded worker")
    ap.add_argument("--paths", default="serve,dataset")
    ap.add_argument("--out", default="benchmarks/results/cluster_bounded")
    args = ap.parse_args(argv)
    if not os.access(CGROUP_ROOT, os.W_OK):
        print(f"needs a writable v1 memory cgroup at {CGROUP_ROOT} (root)", file=sys.stderr)
        return 2
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    from .streaming import _photo

    content, style = _photo(3024, 4032), _photo(256, 256, 1)
    over = int(args.over * 2**30)
    rows, loaded = [], None
    if "serve" in args.paths:
        rows.append(serve_row(args.model, args.budget, over, content, style))
        loaded = rows[-1]["loaded_rss"]
        print(json.dumps(rows[-1]), flush=True)
    if "dataset" in args.paths:
        rows.append(dataset_row(args.model, args.budget, over, content, style, loaded or 3 << 30))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from quantart_runtime.util.atomic import write_json, write_text

    write_json(out.with_suffix(".json"), rows, indent=1)
    write_text(out.with_suffix(".md"), report(rows, args.budget, over))
    return 0


if __name__ == "__main__":
    sys.exit(main())
