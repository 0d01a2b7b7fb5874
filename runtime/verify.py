"""Torch-free precision verification: judge a backend and precision on a model's stored references.

``quantart-export`` stores sample inputs with PyTorch FP32's outputs in the model directory
(``verification_data`` in the manifest, see ``quantart_export.reference``). ``verify_model`` runs
them through a backend at a precision and judges

* each graph, fed the FP32 reference inputs (as export verification does):
  content_encoder: its content tokens (nearest codes of the stored content codebook, computed here in
  float64, as the export verification's quantize_enc tokens; a differing token that is a near-tie for
  the reference latent agrees, ``quantart_runtime.tokens``); style_encoder: its tokens; sga: its
  tokens; decoder: the uint8 image PSNR;
* the whole chain with the resulting plan (content -> sga with the plan's style latent -> decoder):
  tokens and image PSNR.

Gates: token agreement ≥ 99 %, image PSNR ≥ 30 dB (pooled over the stored resolutions). The result
is a *precision plan*: the tested precision for every graph that passes, FP32 for the others; when
the chain fails with that plan, graphs fall back to FP32 (encoders first) until it passes. For bf16 on
OpenVINO an encoder that fails is judged again as ``bf16-tail`` (BF16 with its last stage, norm_out /
conv_out / quant_conv, kept FP32 inside the graph) and kept at that precision when it passes; in the
chain fallback a BF16 encoder first goes to ``bf16-tail``, then to FP32. Precision
``int8`` (OpenVINO) judges only the graphs with an INT8 IR in the model directory (``quantart-export
--int8-calibration``, see ``quantart_export.int8``); the others stay FP32 in its plan.

Precision ``int8`` labels each passing graph by its IR: ``int8`` (every layer quantized) or ``int8-mixed``
(accuracy control kept some layers FP32).

Plans are cached as JSON per (model manifest sha256 and its INT8 files' sha256, backend, precision, CPU model) in
``$XDG_CACHE_HOME/quantart/plans`` (default ``~/.cache/quantart/plans``); ``plan_for`` reads the
cache or verifies once.
"""
from __future__ import annotations

import io
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import ModelError
from .manifest import graph_names, int8_digests, load_manifest
from .memory import Geometry, SizePolicy, resolve_budget
from .tokens import nearest_codes, tie_tolerant_agreement
from .util import psnr_uint8, sha256_bytes, sha256_file, write_json

TOKEN_GATE = 0.99
PSNR_GATE_DB = 30.0
STAGE2_GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")
FALLBACK_ORDER = ("content_encoder", "style_encoder", "sga", "decoder")  # demoted first .. last
TAIL = "bf16-tail"   # BF16 with the graph's last stage (norm_out, conv_out, quant_conv) kept FP32
TAIL_GRAPHS = ("content_encoder", "style_encoder")
MIXED = "int8-mixed"   # an INT8 IR with layers kept FP32 by accuracy control (quantart_export.int8)
INT8_PRECISIONS = ("int8", MIXED)
_ARRAYS = ("content", "style", "content_latent", "content_indices", "content_codebook", "style_latent",
           "style_indices", "stylized_latent", "indices", "image")


def cache_root() -> Path:
    """``$QUANTART_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/quantart`` (default ``~/.cache/quantart``)."""
    if os.environ.get("QUANTART_CACHE_DIR"):
        return Path(os.environ["QUANTART_CACHE_DIR"])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root, "quantart")


def cpu_model() -> str:
    """This CPU's model name and its BF16/AMX/AVX-512 flags (the plan cache key's CPU part)."""
    name, flags = platform.processor() or "unknown CPU", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = sorted(x for x in value.split() if "bf16" in x or x.startswith(("amx", "avx512f")))
                    break
    except OSError:
        pass
    return f"{name} [{' '.join(flags)}]" if flags else name


@dataclass
class Check:
    """One judged measurement: ``graph`` (or "chain"), ``metric``, ``value`` against ``gate``."""
    graph: str
    precision: str
    metric: str
    value: float
    gate: float

    @property
    def passed(self) -> bool:
        """True when ``value`` reaches the gate (higher is better for both metrics)."""
        return not math.isnan(self.value) and self.value >= self.gate

    def as_dict(self) -> dict:
        """JSON form with ``passed``."""
        return {**asdict(self), "passed": self.passed}


@dataclass
class PlanResult:
    """A verified precision plan: {graph: precision} with the checks that chose it and why."""
    backend: str
    precision: str
    plan: dict
    checks: list = field(default_factory=list)
    reason: str = ""
    cpu: str = ""
    model_sha256: str = ""
    cached: bool = False

    def as_dict(self) -> dict:
        """JSON form (the cache file's content)."""
        d = asdict(self)
        d["checks"] = [c.as_dict() if isinstance(c, Check) else c for c in self.checks]
        d.pop("cached")
        return d

    def summary(self) -> str:
        """One line: which graphs run at which precision."""
        return f"{self.backend}: {plan_label(self.plan)}"


def plan_label(plan: dict) -> str:
    """A plan in words: "decoder bf16, the rest fp32", "content_encoder bf16-tail, decoder bf16, ..."."""
    groups: dict[str, list[str]] = {}
    for graph, precision in plan.items():
        if precision != "fp32":
            groups.setdefault(precision, []).append(graph)
    if not groups:
        return "every graph fp32"
    known = ("bf16", TAIL, "int8", MIXED)
    order = sorted(groups, key=lambda p: known.index(p) if p in known else 9)
    text = ", ".join(f"{', '.join(groups[p])} {p}" for p in order)
    return text + (", the rest fp32" if "fp32" in plan.values() else "")


def int8_graphs(manifest: dict) -> dict:
    """{graph: entry} of the model's INT8 OpenVINO IR (the manifest's ``int8.graphs``; empty if none)."""
    graphs = (manifest.get("int8") or {}).get("graphs")
    return dict(graphs) if isinstance(graphs, dict) else {}


def int8_precision(manifest: dict, graph: str) -> str:
    """The plan precision of ``graph``'s stored INT8 IR: ``"int8-mixed"`` when accuracy control kept some
    of its layers FP32 (the entry's ``precision``), else ``"int8"``."""
    entry = int8_graphs(manifest).get(graph) or {}
    return MIXED if entry.get("precision") == MIXED else "int8"


def load_references(model_dir, manifest: dict) -> list[dict[str, np.ndarray]]:
    """The stored verification arrays, one dict per resolution (sha256-checked).

    Raises ``ModelError`` when the model has none (exported before verification data existed), a
    file is missing, altered or malformed.
    """
    root = Path(model_dir)
    entries = manifest.get("verification_data")
    if not entries:
        raise ModelError(f"model {root}: has no verification data (re-export it with this quantart-export)")
    out = []
    for entry in entries:
        name = str(entry.get("file", ""))
        path = root / name
        if not name or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise ModelError(f"model {root}: verification file {name!r} is missing")
        data = path.read_bytes()
        if sha256_bytes(data) != str(entry.get("sha256", "")).lower():
            raise ModelError(f"model {root}: {name} does not match its sha256 in manifest.json")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in _ARRAYS}
        except (KeyError, ValueError, OSError) as exc:
            raise ModelError(f"model {root}: {name} is not a verification file ({exc})") from None
        out.append(arrays)
    return out


def references_within_budget(refs: list, manifest: dict, budget=None) -> tuple[list, list[str]]:
    """The stored references whose size the memory budget holds (the same policy as requests,
    ``quantart_runtime.memory``; ``budget`` as ``resolve_budget``), and the sizes left out ("HxW").
    Raises ``ModelError`` (one line) when the budget holds none of them."""
    policy = SizePolicy(Geometry.from_manifest(manifest), resolve_budget(budget))
    kept, skipped = [], []
    for r in refs:
        n, h, w = r["content"].shape[:3]
        if policy.fits(h, w, batch=n):
            kept.append(r)
        else:
            skipped.append(f"{h}x{w}")
    if not kept:
        raise ModelError(f"verification needs more memory than the budget of {policy.budget / 2**30:.2f} GiB at "
                         f"every stored size ({', '.join(skipped)}); raise it with $QUANTART_MEMORY_BUDGET")
    return kept, skipped


def _preprocess(images: np.ndarray) -> np.ndarray:
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(x)


def _postprocess(image: np.ndarray) -> np.ndarray:
    return np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def _sga_feeds(content_latent, style_latent) -> dict:
    one = np.array([1.0], dtype=np.float32)
    return {"content_latent": content_latent, "style_latent": style_latent, "content_ratio": one,
            "output_ratio": one}


class _Pool:
    """Pooled token agreement / uint8 MSE over resolutions."""

    def __init__(self):
        self.same = self.total = 0
        self.a: list = []
        self.b: list = []

    def tokens(self, ours, ref, latent=None, codebook=None):
        """Count agreeing tokens; with the reference's continuous latent and the codebook, near-ties
        (``tie_tolerant_agreement``) agree, as in export verification."""
        if latent is None:
            self.same += int(np.sum(ours == ref))
        else:
            self.same += int(round(tie_tolerant_agreement(ours, ref, latent, codebook)[0] * ref.size))
        self.total += int(ref.size)

    def image(self, ours, ref):
        self.a.append(ours.reshape(-1))
        self.b.append(ref.reshape(-1))

    def agreement(self) -> float:
        return self.same / self.total if self.total else float("nan")

    def image_psnr(self) -> float:
        return psnr_uint8(np.concatenate(self.a), np.concatenate(self.b))


def judge_graphs(test, refs, precision: str, graphs=STAGE2_GRAPHS) -> list[Check]:
    """Per-graph checks of runner ``test`` for ``graphs``, each graph fed the FP32 reference inputs."""
    pools = {g: _Pool() for g in STAGE2_GRAPHS}
    for r in refs:
        if "content_encoder" in graphs:
            latent = test.infer("content_encoder", {"image": _preprocess(r["content"])})["content_latent"]
            pools["content_encoder"].tokens(nearest_codes(latent, r["content_codebook"]), r["content_indices"],
                                            r["content_latent"], r["content_codebook"])
        if "style_encoder" in graphs:
            out = test.infer("style_encoder", {"image": _preprocess(r["style"])})
            pools["style_encoder"].tokens(out["style_indices"], r["style_indices"])
        if "sga" in graphs:
            out = test.infer("sga", _sga_feeds(r["content_latent"], r["style_latent"]))
            pools["sga"].tokens(out["indices"], r["indices"])
        if "decoder" in graphs:
            image = test.infer("decoder", {"latent": r["stylized_latent"]})["image"]
            pools["decoder"].image(_postprocess(image), r["image"])
    checks = [Check(g, precision, "token agreement", pools[g].agreement(), TOKEN_GATE)
              for g in ("content_encoder", "style_encoder", "sga") if g in graphs]
    if "decoder" in graphs:
        checks.append(Check("decoder", precision, "image PSNR dB", pools["decoder"].image_psnr(), PSNR_GATE_DB))
    return checks


def judge_chain(runner, refs, label: str) -> list[Check]:
    """The chain content -> sga (style latent from the style encoder) -> decoder of ``runner``."""
    pool = _Pool()
    for r in refs:
        latent = runner.infer("content_encoder", {"image": _preprocess(r["content"])})["content_latent"]
        style = runner.infer("style_encoder", {"image": _preprocess(r["style"])})["style_latent"]
        out = runner.infer("sga", _sga_feeds(latent, style))
        pool.tokens(out["indices"], r["indices"])
        pool.image(_postprocess(runner.infer("decoder", {"latent": out["stylized_latent"]})["image"]), r["image"])
    return [Check("chain", label, "token agreement", pool.agreement(), TOKEN_GATE),
            Check("chain", label, "image PSNR dB", pool.image_psnr(), PSNR_GATE_DB)]


def _runner(backend: str, model_dir, manifest, precision: str, plan: dict | None, options: dict):
    from .backends.registry import get_runner_class

    cls = get_runner_class(backend)
    opts = dict(options)
    if plan is not None:
        opts["plan"] = plan
    if backend == "openvino":
        return cls(Path(model_dir), manifest, precision="fp32", **opts)
    if plan is not None:
        raise ModelError(f"backend {backend} runs one precision for every graph; per-graph plans need openvino")
    return cls(Path(model_dir), manifest, precision=precision, **opts)


def verify_model(model_dir, backend: str = "openvino", precision: str = "bf16", **options) -> PlanResult:
    """Judge ``backend`` at ``precision`` on the model's stored references; return the plan.

    ``options`` go to the runner (e.g. ``capabilities``, ``cache_dir``), except ``memory_budget``: stored
    references larger than the memory budget allows are left out (said in the result's reason).
    Raises ``ModelError`` / ``BackendError`` (one line) when the model or backend cannot be used.
    """
    manifest = load_manifest(model_dir, precision="fp32")
    if manifest["kind"] != "stage2":
        raise ModelError(f"model {model_dir}: precision plans are for Stage 2 models")
    refs, skipped = references_within_budget(load_references(model_dir, manifest), manifest,
                                             options.pop("memory_budget", None))
    result = _verify(model_dir, manifest, refs, backend, precision, options)
    if skipped:
        result.reason += f"; left out the references at {', '.join(skipped)} (over the memory budget)"
    return result


def _verify(model_dir, manifest, refs, backend: str, precision: str, options: dict) -> PlanResult:
    """verify_model on the references ``refs`` (already within the memory budget)."""
    result = PlanResult(backend, precision, {g: "fp32" for g in graph_names(manifest)}, cpu=cpu_model(),
                        model_sha256=sha256_file(Path(model_dir) / "manifest.json"))
    per_graph = backend == "openvino"
    candidates = list(result.plan)
    if precision == "int8":   # only graphs with a (export-verified) INT8 IR can run INT8
        candidates = [g for g in candidates if g in int8_graphs(manifest)]
        if backend != "openvino" or not candidates:
            raise ModelError(f"model {model_dir}: has no INT8 IR for {backend} "
                             f"(export it with quantart-export --int8-calibration DIR; openvino only)")
    if precision == "fp32":
        with _runner(backend, model_dir, manifest, "fp32", None, options) as base:
            result.checks = judge_graphs(base, refs, "fp32") + judge_chain(base, refs, "fp32")
        result.reason = "fp32 reference" if all(c.passed for c in result.checks) else "FP32 fails its own gate"
        return result
    label = {g: int8_precision(manifest, g) if precision == "int8" else precision for g in candidates}
    test = _runner(backend, model_dir, manifest, precision, label if per_graph else None, options)
    with test:
        result.checks = judge_graphs(test, refs, precision, candidates)
    plan = dict(result.plan)
    plan.update({c.graph: (label[c.graph] if c.passed else "fp32") for c in result.checks})
    if not per_graph:
        plan = {g: (precision if all(c.passed for c in result.checks) else "fp32") for g in plan}
    retry = [g for g in TAIL_GRAPHS if plan[g] == "fp32"] if per_graph and precision == "bf16" else []
    if retry:   # encoders that flip tokens in BF16: try again with their last stage FP32
        with _runner(backend, model_dir, manifest, precision, {g: TAIL for g in retry}, options) as tail:
            tail_checks = judge_graphs(tail, refs, TAIL, retry)
        result.checks += tail_checks
        plan.update({c.graph: TAIL for c in tail_checks if c.passed})
    order = [g for g in FALLBACK_ORDER if plan[g] != "fp32"]
    demoted: list[str] = []
    while True:
        if all(p == "fp32" for p in plan.values()):
            break
        with _runner(backend, model_dir, manifest, precision, plan if per_graph else None,
                     options) as chained:
            chain = judge_chain(chained, refs, "plan")
        result.checks += chain
        if all(c.passed for c in chain):
            break
        if not per_graph:
            plan = {g: "fp32" for g in plan}
            break
        graph = order[0]
        if per_graph and plan[graph] == "bf16" and graph in TAIL_GRAPHS:
            plan[graph] = TAIL    # first keep its last stage FP32, then the whole graph
        else:
            plan[order.pop(0)] = "fp32"
        demoted.append(f"{graph} to {plan[graph]}")
    result.plan = plan
    failed = sorted({c.graph for c in result.checks if not c.passed and c.graph != "chain" and plan[c.graph] == "fp32"})
    tails = [g for g in plan if plan[g] == TAIL]
    result.reason = (f"verified {precision}: " + (f"{', '.join(failed)} stay fp32 (below the gate)"
                                                    if failed else "every judged graph passes"))
    if tails:
        result.reason += f"; {', '.join(tails)} {TAIL} (last stage fp32)"
    if demoted:
        result.reason += f"; for the chain: {', '.join(demoted)}"
    return result


def plan_cache_path(model_sha256: str, backend: str, precision: str, cpu: str | None = None,
                    int8_sha256: dict | None = None) -> Path:
    """The cache file of one (model, backend, precision, CPU model, INT8 files): ``int8_sha256`` is
    {file: sha256} of the model's INT8 IR files as found on disk (``int8_digests``), so replacing one
    (even behind an unchanged manifest) makes a new plan."""
    cpu_key = sha256_bytes((cpu or cpu_model()).encode())[:12]
    model_key = model_sha256[:20]
    if int8_sha256:
        files = "".join(f"{name}={digest}\n" for name, digest in sorted(int8_sha256.items()))
        model_key = sha256_bytes(f"{model_sha256}\n{files}".encode())[:20]
    return cache_root() / "plans" / f"{model_key}-{backend}-{precision}-{cpu_key}.json"


def plan_for(model_dir, backend: str = "openvino", precision: str = "bf16", refresh: bool = False,
             **options) -> PlanResult:
    """The cached plan of this model on this CPU, else ``verify_model`` once and cache it.

    A corrupt cache file is ignored and rewritten. Raises as ``verify_model``.
    """
    manifest = load_manifest(model_dir, precision="fp32", verify=False)   # a missing / bad directory: ModelError
    digest = sha256_file(Path(model_dir) / "manifest.json")
    path = plan_cache_path(digest, backend, precision, int8_sha256=int8_digests(model_dir, manifest))
    if not refresh and path.is_file():
        try:
            data = json.loads(path.read_text())
            if data.get("model_sha256") == digest and isinstance(data.get("plan"), dict):
                return PlanResult(data["backend"], data["precision"], data["plan"], data.get("checks", []),
                                  data.get("reason", ""), data.get("cpu", ""), digest, cached=True)
        except (OSError, ValueError, KeyError):
            pass
    result = verify_model(model_dir, backend, precision, **options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result.as_dict())
    except OSError:
        pass   # an unwritable cache only costs a re-verification next time
    return result


def format_checks(result: PlanResult) -> str:
    """The checks and the plan as a text table."""
    lines = [f"{'graph':<16} {'precision':<9} {'metric':<16} {'value':>9}  gate    result"]
    for c in result.checks:
        c = c if isinstance(c, Check) else Check(c["graph"], c["precision"], c["metric"], c["value"], c["gate"])
        value = f"{c.value * 100:.2f} %" if c.metric.startswith("token") else f"{c.value:.2f}"
        gate = f"{c.gate * 100:.0f} %" if c.metric.startswith("token") else f"{c.gate:.0f} dB"
        lines.append(f"{c.graph:<16} {c.precision:<9} {c.metric:<16} {value:>9}  {gate:<7} "
                     f"{'ok' if c.passed else 'FAIL'}")
    lines.append("plan: " + ", ".join(f"{g} {p}" for g, p in result.plan.items()) + f"  ({result.reason})")
    return "\n".join(lines)
