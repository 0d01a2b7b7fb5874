"""Batch stylization on Ray Data: a folder (or any path Ray Data reads) in, the same names out.

The driver lists the inputs, leaves out those whose output already exists and is complete, and
feeds the rest through ``map_batches`` onto a fixed pool of actors (``ActorPoolStrategy``); each
actor loads the model and encodes the style once, then reads, stylizes and writes its batches.
Fault tolerance is Ray's: an actor that dies is restarted (``max_restarts``) and its batch is
retried on the replacement (``max_task_retries``); outputs are written atomically, and a retried
batch skips what its first attempt already wrote, so nothing is lost or written twice.

Each actor runs ``quantart_runtime.core.StylizeCore`` (the same load -> fit -> batch -> stylize ->
write path, error policy and size policy as ``quantart stylize`` and the service): a bad input file,
an image above the memory limit that may not be resized, or any other per-image failure does not stop
the job; each is recorded with its reason in the failures file (JSON lines, default
``OUTPUT/failures.jsonl``), as are broken links and unreadable sub-folders of the input. A local
output folder is checked for writability before any work. Ray is imported lazily and, when this
process starts it, bound to 127.0.0.1 (``ray_init_options``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..core import OUTPUT_FORMATS, StylizeCore, check_writable, failure_reason
from ..errors import ModelError
from ..images import check_min_size, load_image
from . import storage

log = logging.getLogger(__name__)

# Test/chaos hook: when this names a file that does not exist yet, the first worker to take a batch
# creates it and then dies abruptly (os._exit), as a crashed or preempted machine would.
CRASH_ONCE_ENV = "QUANTART_CLUSTER_CRASH_ONCE"
FAILURES_NAME = "failures.jsonl"


@dataclass
class Summary:
    """What a ``stylize_dataset`` run did."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input path, reason)
    failures_file: str | None = None

    @property
    def images_per_s(self) -> float:
        """Images written per second of the run."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        return (f"done {self.done}, failed {self.failed}, skipped {self.skipped} "
                f"in {self.elapsed_s:.1f} s ({self.images_per_s:.2f} images/s)")


class StylizeWorker:
    """One actor of the pool: the model and the style code live here for the actor's lifetime."""

    def __init__(self, model_dir, style_bytes: bytes, backend: str = "auto", precision: str = "fp32",
                 style_size: int = 256, content_ratio: float = 1.0, output_ratio: float = 1.0,
                 batch_size: int | None = None, threads: int | None = None, crash_marker: str | None = None,
                 max_side: int | None = None, resize: bool = True, memory_budget=None):
        from .. import Stylizer

        # Ray pins each actor's GPUs as device 0; CPU threads follow the actor's CPU reservation.
        options = {"intra_op_threads": int(threads)} if threads else {}
        self.stylizer = Stylizer.load(model_dir, backend=backend, device=0, precision=precision, **options)
        self.core = StylizeCore(self.stylizer, style_bytes, content_ratio=content_ratio,
                                output_ratio=output_ratio, batch_size=batch_size, max_side=max_side,
                                resize=resize, style_size=style_size, memory_budget=memory_budget)
        self.batch_size = batch_size
        self.crash_marker = crash_marker

    def _maybe_crash(self) -> None:
        if not self.crash_marker:
            return
        try:
            fd = os.open(self.crash_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(17)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One Ray Data batch of ``src``/``dst`` -> ``src``/``status``/``reason`` (every item reported)."""
        self._maybe_crash()
        sources = [str(s) for s in batch["src"]]
        targets = [str(d) for d in batch["dst"]]
        status = ["done"] * len(sources)
        reasons = [""] * len(sources)
        items = []
        for i, (src, dst) in enumerate(zip(sources, targets)):
            if storage.is_complete(dst):  # a retried batch: its first attempt wrote this one
                continue
            try:
                items.append((i, storage.read_bytes(src), dst))
            except Exception as exc:  # noqa: BLE001 - the error policy: reported for this file
                status[i], reasons[i] = "failed", f"cannot read: {failure_reason(exc)}"
        for outcome in self.core.run(items, write=storage.write_image, window=self.batch_size or 8):
            if not outcome.ok:
                status[outcome.key], reasons[outcome.key] = "failed", outcome.error
        return {"src": np.array(sources, dtype=object), "status": np.array(status, dtype=object),
                "reason": np.array(reasons, dtype=object)}


RAY_BIND_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_init_options(address: str | None) -> dict:
    """``ray.init`` options for a Ray this process starts: a local one (``address`` None) binds its
    node (GCS, raylet, workers, Serve replicas) to 127.0.0.1 unless ``QUANTART_RAY_NODE_IP`` names
    another interface; joining a cluster keeps that cluster's settings."""
    if address is not None:
        return {"address": address}
    node_ip = os.environ.get("QUANTART_RAY_NODE_IP", "127.0.0.1")
    if node_ip in ("127.0.0.1", "localhost"):
        # Ray resolves a loopback node address to the machine's IP unless clusters are off
        os.environ.setdefault(RAY_BIND_ENV, "0")
        import ray._private.ray_constants as constants

        constants.ENABLE_RAY_CLUSTER = os.environ[RAY_BIND_ENV] not in ("0", "false", "False")
    return {"_node_ip_address": node_ip, "include_dashboard": False}


def _connect(address: str | None):
    """Join the running Ray (if this process already has one), else start/connect one.
    Returns True when this call started it (so it shuts it down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(ignore_reinit_error=True, log_to_driver=False, **ray_init_options(address))
    return True


def _default_workers(cpus_per_worker: float, gpus_per_worker: float) -> int:
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) // max(cpus_per_worker, 1e-3)))


def _check_model(model_dir, precision: str) -> int | None:
    """Fail at once on a broken model directory (when the driver can see it); returns its latent
    stride (``None`` for a URI the driver does not read)."""
    from ..manifest import load_manifest

    if os.path.isdir(model_dir):
        return int(load_manifest(model_dir, precision=precision, verify=True)["latent_stride"])
    if not storage.is_uri(model_dir):
        raise ModelError(f"model {model_dir}: no such directory")
    return None


def stylize_dataset(model_dir, style, input, output, *, address: str | None = None,
                    num_workers: int | None = None, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
                    batch_size: int = 8, backend: str = "auto", precision: str = "fp32",
                    content_ratio: float = 1.0, output_ratio: float = 1.0, style_size: int = 256,
                    ext: str = "same", failures_file=None, max_task_retries: int = 3,
                    progress: bool = True, max_side: int | None = None, resize: bool = True,
                    memory_budget=None, output_format: str | None = None) -> Summary:
    """Stylize every image under ``input`` into ``output`` (same relative names) on a Ray cluster.

    ``style``: path, URI or encoded bytes of the style image. ``address``: ``None`` joins the Ray
    of this process or starts a local one; ``"auto"`` joins the cluster of this machine;
    ``"ray://host:10001"`` a remote one (``model_dir`` must then be readable by the workers).
    ``num_workers`` actors (default: as many as the cluster's CPUs / GPUs allow) each hold one model;
    ``batch_size`` images go to an actor at a time. ``max_task_retries``: tries of a batch whose
    actor died. ``ext``: output format, one of ``core.OUTPUT_FORMATS`` (``output_format`` is its old
    name). ``max_side`` / ``resize`` / ``memory_budget``: the size policy of ``core.StylizeCore``.
    Raises ``ModelError`` for an unusable model, ``ImageError`` for a bad style image,
    ``FileNotFoundError`` for a missing input, ``OSError`` for an unwritable output folder; bad input
    images are recorded, not raised.
    """
    started = time.perf_counter()
    ext = output_format if output_format is not None else ext
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {ext!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if memory_budget is not None:
        from ..memory import parse_budget

        parse_budget(memory_budget)  # ValueError here, not in every worker
    model_dir = str(model_dir)
    stride = _check_model(model_dir, precision)
    style_bytes = bytes(style) if isinstance(style, (bytes, bytearray)) else storage.read_bytes(style)
    image = load_image(style_bytes)  # ImageError here, before any worker starts
    if stride:
        check_min_size(image.shape[0], image.shape[1], stride)
    if not storage.is_uri(input) and not storage.is_uri(output):
        folder = input if os.path.isdir(input) else os.path.dirname(os.path.abspath(input))
        if os.path.realpath(folder) == os.path.realpath(output):
            raise ValueError(f"output {output} is the input folder; inputs are never overwritten, "
                             f"choose another output folder")
    if not storage.is_uri(output):
        check_writable(output)
    problems: list[tuple[str, str]] = []
    items = storage.list_inputs(input, exclude=output, problems=problems)
    done_names = storage.existing_outputs(output)
    summary = Summary(failures_file=str(failures_file or storage.join(output, FAILURES_NAME)))
    summary.failed += len(problems)
    summary.failures.extend(problems)
    todo = []
    for src, rel in items:
        out_rel = storage.output_name(rel, ext)
        if out_rel in done_names:
            summary.skipped += 1
        else:
            todo.append({"src": src, "dst": storage.join(output, out_rel)})
    if todo:
        _run(todo, summary, model_dir, style_bytes, address=address, num_workers=num_workers,
             gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, batch_size=batch_size,
             progress=progress, max_task_retries=max_task_retries,
             worker_options=dict(backend=backend, precision=precision, style_size=style_size,
                                 content_ratio=content_ratio, output_ratio=output_ratio,
                                 batch_size=batch_size, max_side=max_side, resize=resize,
                                 memory_budget=memory_budget,
                                 threads=max(1, int(round(cpus_per_worker))) if cpus_per_worker else None))
    summary.failures.sort()
    storage.write_failures(summary.failures_file, summary.failures)
    summary.elapsed_s = time.perf_counter() - started
    return summary


def _run(todo: list[dict], summary: Summary, model_dir: str, style_bytes: bytes, *, address,
         num_workers, gpus_per_worker, cpus_per_worker, batch_size, progress, max_task_retries,
         worker_options: dict) -> None:
    import ray
    import ray.data

    owns_ray = _connect(address)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = bool(progress)
        workers = num_workers or _default_workers(cpus_per_worker, gpus_per_worker)
        workers = max(1, min(workers, -(-len(todo) // batch_size)))
        blocks = max(workers, min(len(todo), 4 * workers, -(-len(todo) // batch_size)))
        dataset = ray.data.from_items(todo, override_num_blocks=blocks)
        results = dataset.map_batches(
            StylizeWorker,
            fn_constructor_kwargs=dict(model_dir=model_dir, style_bytes=style_bytes,
                                       crash_marker=os.environ.get(CRASH_ONCE_ENV) or None,
                                       **worker_options),
            compute=ray.data.ActorPoolStrategy(size=workers),
            batch_size=batch_size, batch_format="numpy",
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
            max_restarts=-1, max_task_retries=max_task_retries,
        )
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for src, status, reason in zip(batch["src"], batch["status"], batch["reason"]):
                if status == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    summary.failures.append((str(src), str(reason)))
    finally:
        if owns_ray:
            ray.shutdown()
