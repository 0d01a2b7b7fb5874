"""The measured part of ``backend="auto"`` on a CPU: time each verified candidate, keep the fastest.

A *candidate* is one way to run a model that verification has passed on this host: a backend with the
precision plan of its graphs (ONNX Runtime FP32; OpenVINO with its verified BF16 plan; later others,
such as an OpenVINO INT8 plan: one more ``Candidate`` in the list). ``measure`` times each on the model's
stored verification inputs at the serving size (the profile's ``opt_res``; the largest stored size the
memory budget holds when that one is over it): the per-image path content encoder -> SGA -> decoder (the
style code is computed once per style), batch 1, one warm-up then ``RUNS`` runs, the minimum. The
result is cached as JSON per (model manifest sha256, CPU model, backend versions, candidate list) in
``$QUANTART_CACHE_DIR/choices`` (default ``~/.cache/quantart/choices``), so only the first use pays for
it; ``refresh=True`` measures again.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelError
from .manifest import load_manifest
from .util import sha256_bytes, sha256_file, write_json
from .verify import _preprocess, _runner, _sga_feeds, cache_root, cpu_model, load_references, references_within_budget

RUNS = 3


@dataclass
class Candidate:
    """One verified way to run the model: ``backend``, the manifest precision its graphs come from
    (``graph_precision``), the label shown to users (``precision``), the runner options (``plan``, ...),
    how it was verified (``how``) and, once measured, ``seconds`` per image (min of RUNS)."""
    backend: str
    graph_precision: str
    precision: str
    options: dict = field(default_factory=dict)
    how: str = ""
    seconds: float | None = None

    def key(self) -> dict:
        """What identifies the candidate in the cache (backend, precisions and plan)."""
        return {"backend": self.backend, "graph_precision": self.graph_precision, "precision": self.precision,
                "plan": self.options.get("plan")}

    def timing(self) -> str:
        """"onnxruntime fp32 225 ms" (or "... not measured")."""
        ms = "not measured" if self.seconds is None else f"{self.seconds * 1e3:.0f} ms"
        return f"{self.backend} {self.precision} {ms}"


@dataclass
class Measurement:
    """The timed candidates (fastest first), at ``size`` ("HxW"), and whether it came from the cache."""
    candidates: list
    size: str
    cached: bool = False

    @property
    def winner(self) -> Candidate:
        """The fastest candidate."""
        return self.candidates[0]

    def summary(self) -> str:
        """"measured per image at 256x256: onnxruntime fp32 225 ms, openvino decoder bf16, ... 269 ms"."""
        how = "cached measurement" if self.cached else "measured now"
        return (f"{how}, per image at {self.size} on the stored verification inputs (min of {RUNS}): "
                + ", ".join(c.timing() for c in self.candidates))


def backend_versions() -> dict:
    """{backend: version} of the installed CPU backends (the measurement cache key's part)."""
    out = {}
    try:
        import onnxruntime
        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        import openvino
        out["openvino"] = openvino.get_version()
    except ImportError:
        pass
    return out


def serving_reference(refs: list, manifest: dict) -> dict:
    """The stored reference at the serving size (``profile.opt_res`` square), else the largest."""
    opt = int((manifest.get("profile") or {}).get("opt_res", 0))
    for r in refs:
        if r["content"].shape[1:3] == (opt, opt):
            return r
    return max(refs, key=lambda r: r["content"].shape[1] * r["content"].shape[2])


def time_per_image(runner, ref: dict, runs: int = RUNS) -> float:
    """Seconds per image (min of ``runs`` after one warm-up) of content encoder -> SGA -> decoder for the
    first content image of ``ref`` with its stored style latent."""
    image = _preprocess(ref["content"][:1])
    style = ref["style_latent"][:1]

    def once() -> None:
        latent = runner.infer("content_encoder", {"image": image})["content_latent"]
        out = runner.infer("sga", _sga_feeds(latent, style))
        runner.infer("decoder", {"latent": out["stylized_latent"]})

    once()
    best = float("inf")
    for _ in range(max(1, int(runs))):
        t0 = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - t0)
    return best


def measurement_cache_path(model_sha256: str, candidates: list, cpu: str | None = None,
                           versions: dict | None = None) -> Path:
    """The cache file of one (model, CPU model, backend versions, candidate list)."""
    key = json.dumps({"cpu": cpu or cpu_model(), "versions": backend_versions() if versions is None else versions,
                      "candidates": [c.key() for c in candidates], "runs": RUNS}, sort_keys=True)
    return cache_root() / "choices" / f"{model_sha256[:20]}-{sha256_bytes(key.encode())[:16]}.json"


def _read_cache(path: Path, digest: str, candidates: list) -> Measurement | None:
    try:
        data = json.loads(path.read_text())
        seconds = {json.dumps(c["key"], sort_keys=True): float(c["seconds"]) for c in data["candidates"]}
        if data.get("model_sha256") != digest:
            return None
        timed = []
        for c in candidates:
            timed.append(Candidate(c.backend, c.graph_precision, c.precision, dict(c.options), c.how,
                                   seconds[json.dumps(c.key(), sort_keys=True)]))
        return Measurement(sorted(timed, key=lambda c: c.seconds), str(data["size"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(model_dir, candidates: list, refresh: bool = False, memory_budget=None) -> Measurement:
    """Time every candidate (see the module docstring), each with its own runner options; fastest
    first (the earlier candidate on a tie); cached.

    Raises ``ModelError`` (no verification data, none within the memory budget) and ``BackendError``
    (a runner that cannot start), one line.
    """
    if not candidates:
        raise ModelError(f"model {model_dir}: no candidate to measure")
    manifest = load_manifest(model_dir, precision="fp32", verify=False)
    digest = sha256_file(Path(model_dir) / "manifest.json")
    path = measurement_cache_path(digest, candidates)
    if not refresh and path.is_file():
        found = _read_cache(path, digest, candidates)
        if found is not None:
            return found
    refs, _ = references_within_budget(load_references(model_dir, manifest), manifest, memory_budget)
    ref = serving_reference(refs, manifest)
    timed = []
    for c in candidates:
        opts = dict(c.options)
        plan = opts.pop("plan", None)
        with _runner(c.backend, model_dir, manifest, c.graph_precision, plan, opts) as runner:
            seconds = time_per_image(runner, ref)
        timed.append(Candidate(c.backend, c.graph_precision, c.precision, dict(c.options), c.how, seconds))
    h, w = ref["content"].shape[1:3]
    result = Measurement(sorted(timed, key=lambda c: c.seconds), f"{h}x{w}")
    record = {"model_sha256": digest, "cpu": cpu_model(), "versions": backend_versions(), "size": result.size,
              "runs": RUNS, "candidates": [{"key": c.key(), **{k: v for k, v in asdict(c).items() if k != "options"}}
                                           for c in result.candidates]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
    except OSError:
        pass   # an unwritable cache only costs a measurement next time
    return result
