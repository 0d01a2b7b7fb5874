"""OpenVINO backend: the exported FP32 ONNX graphs on the CPU, in FP32 or BF16, per graph.

OpenVINO reads the exported ``*.onnx`` graphs as they are (no new export format). Each graph is
compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32 or bf16; ``plan`` gives a precision per
graph (e.g. ``{"decoder": "bf16"}`` with the rest at ``precision``), as a verified precision plan
(``quantart_runtime.verify``) does. In a BF16 graph OpenVINO 2026.4's CPU plugin runs convolutions,
matmuls, MVN (GroupNorm) and softmax in BF16 unless told otherwise, so inside a BF16 graph the
sensitive nodes are pinned to FP32 (``keep_fp32``, default all three groups): ``"norm"`` the GroupNorm
statistics (MVN), ``"softmax"`` the attention softmax, ``"code"`` the nearest-code subgraph (distance
MatMul, ArgMin/TopK, the code Gather and the ratio fusion after it) -- the split the FP16 graphs make
with explicit casts. OpenVINO honours its ``precise`` runtime attribute (DisablePrecisionConversion)
per node, which Python cannot attach to an ``ov.Model`` directly, so the graph goes through an
in-memory IR with the attribute on those layers (``pin_fp32``). Measured with OpenVINO 2026.4 (runtime
precisions of the compiled graph): MVN honours it (GroupNorm statistics run FP32); Softmax and the
distance MatMul (rewritten to FullyConnected by the CPU plugin) still run BF16; TopK always runs FP32.
Graphs whose tokens still flip in BF16 stay FP32 in the verified plan.

Precision ``bf16-tail`` is BF16 with the graph's last stage also kept FP32: every node downstream of its
last normalization (``tail_nodes``; in an encoder norm_out, SiLU, conv_out and quant_conv, and in the
style encoder the nearest code after them). The same pinning keeps those convolutions FP32 (measured:
their runtime precision is f32). It trades a little speed for the content tokens that a BF16 conv_out /
quant_conv flips; the verified plan tries it for encoders that fail plain BF16.

Precision ``int8`` reads the INT8 OpenVINO IR that ``quantart-export --int8-calibration DIR`` stored
and verified (the manifest's ``int8`` section, see ``quantart_export.int8``; both files sha256-checked
by ``load_manifest``): ``precision="int8"`` runs every graph that has one from it and the others
(always the SGA + nearest-code graph) in FP32; ``plan={"decoder": "int8"}`` asks per graph. A graph whose IR
keeps some layers FP32 (NNCF accuracy control) is ``int8-mixed`` in plans; it runs the same way.
A model directory without that IR (or a plan naming a graph without it) is a one-line ``BackendError``.
The non-quantized layers of an INT8 graph run FP32 (``INFERENCE_PRECISION_HINT`` f32).

BF16 only where the CPU reports it in ``OPTIMIZATION_CAPABILITIES``; elsewhere asking for it is a
one-line ``BackendError``. The capability list can be passed in (``capabilities=[...]``) so that a
test can play a CPU without BF16.

Compiled models are cached on disk (OpenVINO's ``CACHE_DIR``, under the user cache directory:
``$XDG_CACHE_HOME/quantart/openvino`` or ``~/.cache/quantart/openvino``; ``cache_dir=`` overrides,
``cache_dir=False`` disables), so a second load of a model skips compilation. Performance hint:
``LATENCY`` (one stream, every core on one request) for batch-1 calls; the first call with a batch
above one compiles a ``THROUGHPUT`` twin of that graph (several streams) and splits such batches over
its parallel requests. ``hint="LATENCY"`` / ``"THROUGHPUT"`` forces one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import BackendError, ModelError
from ..manifest import graph_names, graph_path
from ..util import one_line
from ..verify import INT8_PRECISIONS, MIXED, TAIL, cache_root, int8_graphs, int8_precision
from .base import Runner
from .onnxruntime import default_threads

PRECISIONS = ("fp32", "bf16", TAIL, "int8", MIXED)
BF16_PRECISIONS = ("bf16", TAIL)
HINTS = ("auto", "LATENCY", "THROUGHPUT")
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16", TAIL: "bf16", "int8": "f32", MIXED: "f32"}
PIN_GROUPS = ("norm", "softmax", "code")
_CODE_PATH = frozenset({"MatMul", "Multiply", "Subtract", "Add", "Gather", "Reshape", "Transpose", "Squeeze",
                        "Unsqueeze", "Convert", "Concat"})


def pinned_nodes(model, groups=PIN_GROUPS) -> set[str]:
    """Friendly names of the nodes of ``model`` to keep FP32 for ``groups`` (see the module docstring)."""
    names: set[str] = set()
    ops = list(model.get_ordered_ops())
    for node in ops:
        kind = node.get_type_name()
        if ("norm" in groups and kind in ("MVN", "GroupNormalization")) or ("softmax" in groups and kind == "Softmax"):
            names.add(node.get_friendly_name())
    if "code" not in groups:
        return names
    for node in ops:
        if node.get_type_name() not in ("TopK", "ArgMin"):
            continue
        names.add(node.get_friendly_name())
        back = [i.get_source_output().get_node() for i in node.inputs()]
        while back:   # the distance: Subtract <- Multiply <- MatMul(z, E^T)
            src = back.pop()
            if src.get_friendly_name() in names or src.get_type_name() not in _CODE_PATH:
                continue
            names.add(src.get_friendly_name())
            if src.get_type_name() != "MatMul":
                back.extend(i.get_source_output().get_node() for i in src.inputs())
        ahead = [t.get_node() for o in node.outputs() for t in o.get_target_inputs()]
        while ahead:  # the code lookup and the ratio fusion, up to the outputs
            dst = ahead.pop()
            if dst.get_friendly_name() in names or dst.get_type_name() not in _CODE_PATH:
                continue
            names.add(dst.get_friendly_name())
            ahead.extend(t.get_node() for o in dst.outputs() for t in o.get_target_inputs())
    return names


def tail_nodes(model, norms: int = 1) -> set[str]:
    """Friendly names of the nodes downstream of ``model``'s ``norms``-th last normalization (MVN), up
    to the outputs: with ``norms=1`` an encoder's norm_out, SiLU, conv_out and quant_conv (``TAIL``)."""
    mvns = [n for n in model.get_ordered_ops() if n.get_type_name() in ("MVN", "GroupNormalization")]
    if not mvns:
        return set()
    names: set[str] = set()
    todo = [mvns[-min(norms, len(mvns))]]
    while todo:
        node = todo.pop()
        if node.get_friendly_name() in names or node.get_type_name() in ("Result", "Constant", "Parameter"):
            continue
        names.add(node.get_friendly_name())
        todo.extend(t.get_node() for o in node.outputs() for t in o.get_target_inputs())
    return names


def pin_fp32(core, model, names: set[str]):
    """``model`` with OpenVINO's ``precise`` attribute on the layers named ``names`` (kept FP32 under a
    BF16 inference precision), through an in-memory IR round trip; returns the new ``ov.Model``."""
    import html
    import re
    import tempfile

    import openvino as ov

    if not names:
        return model
    with tempfile.TemporaryDirectory(prefix="quantart-ov-") as tmp:
        xml_path = Path(tmp) / "graph.xml"
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        xml = xml_path.read_text(encoding="utf-8")
        weights = np.fromfile(xml_path.with_suffix(".bin"), dtype=np.uint8)

    def mark(match):
        if html.unescape(match.group(1)) not in names:
            return match.group(0)
        return match.group(0) + '\n\t\t\t<rt_info><attribute name="precise" version="0" /></rt_info>'

    xml = re.sub(r'<layer id="\d+" name="([^"]*)"[^>]*[^/]>', mark, xml)
    return core.read_model(xml.encode("utf-8"), ov.Tensor(weights))


def cpu_capabilities() -> list[str]:
    """OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU device (e.g. ["BF16", "FP32", "INT8"])."""
    import openvino as ov

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_name() -> str:
    """The CPU's model name as OpenVINO reports it (FULL_DEVICE_NAME), else /proc/cpuinfo's."""
    try:
        import openvino as ov

        return str(ov.Core().get_property("CPU", "FULL_DEVICE_NAME")).strip()
    except Exception:  # openvino missing: fall back to the kernel's view
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


class OpenVINORunner(Runner):
    """Runs a model's FP32 ONNX graphs with OpenVINO on the CPU (see the module docstring).

    Args:
        model_dir, manifest, device: as ``Runner``.
        precision: ``"fp32"``, ``"bf16"``, ``"bf16-tail"`` or ``"int8"``: the default precision of every
            graph (``"int8"``: the graphs with a stored INT8 IR, the others FP32).
        plan: {graph: one of ``PRECISIONS``}, per-graph precisions overriding ``precision``.
        hint: ``"auto"`` (LATENCY for batch 1, THROUGHPUT twins for larger batches), ``"LATENCY"``
            or ``"THROUGHPUT"``.
        cache_dir: OpenVINO's model cache directory (default under the user cache dir; False: none).
        capabilities: the CPU's optimization capabilities (default: OpenVINO's report).
        num_threads: inference threads (default: the physical cores this process may use).
        keep_fp32: node groups kept FP32 inside BF16 graphs, a subset of ``PIN_GROUPS`` (default all).

    Raises:
        TypeError: an unknown option. BackendError: a bad precision / plan / hint, INT8 asked for a
        graph without a stored INT8 IR, or BF16 asked for on a CPU that does not report it.
    """

    name = "openvino"
    OPTIONS = frozenset({"plan", "hint", "cache_dir", "capabilities", "num_threads", "keep_fp32"})

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        super().__init__(model_dir, manifest, precision, device, **options)
        if precision not in PRECISIONS:
            raise BackendError(f"openvino runs precision {' or '.join(PRECISIONS)}, not {precision!r}")
        plan = dict(options.get("plan") or {})
        names = graph_names(manifest)
        bad = {g: p for g, p in plan.items() if g not in names or p not in PRECISIONS}
        if bad:
            raise BackendError(f"openvino: bad precision plan entries {bad} (graphs: {', '.join(names)}; "
                               f"precisions: {', '.join(PRECISIONS)})")
        int8 = int8_graphs(manifest)
        if precision == MIXED:
            raise BackendError("openvino: int8-mixed is a per-graph plan entry; ask for precision int8 (every "
                               "graph with a stored INT8 IR) or plan={graph: 'int8-mixed'}")
        default = {g: (int8_precision(manifest, g) if g in int8 else "fp32") if precision == "int8" else precision
                   for g in names}
        self.plan = {g: plan.get(g, default[g]) for g in names}
        missing = [g for g, p in self.plan.items() if p in INT8_PRECISIONS and g not in int8]
        if missing or (precision == "int8" and not int8):
            raise BackendError(f"openvino: model {model_dir} has no INT8 IR for "
                               f"{', '.join(missing) or 'any graph'} (export it with quantart-export "
                               f"--int8-calibration DIR)")
        self.hint = options.get("hint", "auto")
        if self.hint not in HINTS:
            raise BackendError(f"openvino: hint must be one of {', '.join(HINTS)}, got {self.hint!r}")
        cache = options.get("cache_dir")
        self.cache_dir = None if cache is False else Path(cache) if cache else cache_root() / "openvino"
        self.capabilities = options.get("capabilities")
        self.num_threads = int(options.get("num_threads") or default_threads())
        keep = options.get("keep_fp32", PIN_GROUPS)
        if not set(keep) <= set(PIN_GROUPS):
            raise BackendError(f"openvino: keep_fp32 takes {', '.join(PIN_GROUPS)}, got {sorted(keep)}")
        self.keep_fp32 = tuple(g for g in PIN_GROUPS if g in keep)
        self.pinned: dict[str, int] = {}   # graph -> number of nodes kept FP32 in its BF16 plan
        self.core = None
        self.compiled: dict = {}      # (graph, hint) -> CompiledModel
        self.requests: dict = {}      # (graph, hint) -> InferRequest or AsyncInferQueue
        self._models: dict = {}

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, "") when openvino imports and has a CPU device, else (False, reason)."""
        try:
            import openvino as ov
        except ImportError:
            return False, "openvino is not installed (pip install 'quantart[cpu]')"
        try:
            devices = ov.Core().available_devices
        except Exception as exc:
            return False, f"openvino cannot start: {one_line(exc)}"
        if "CPU" not in devices:
            return False, f"openvino has no CPU device here (devices: {', '.join(devices) or 'none'})"
        return True, ""

    def graph_inputs(self, graph: str) -> list[dict]:
        """The FP32 graphs' input descriptions (the graphs every OpenVINO precision reads)."""
        graphs = self.manifest["graphs"]["fp32"]
        if graph not in graphs:
            raise KeyError(f"OpenVINORunner: model has no graph {graph!r} (graphs: {', '.join(graphs)})")
        return [io for io in graphs[graph].get("inputs", []) if isinstance(io, dict) and "name" in io]

    # -- life cycle ------------------------------------------------------------------------
    def activate_impl(self) -> None:
        """Check BF16 support (one-line ``BackendError`` without it), set the model cache, and compile
        every graph with its plan precision and the initial hint."""
        import openvino as ov

        if set(BF16_PRECISIONS) & set(self.plan.values()):
            caps = [str(c) for c in (self.capabilities if self.capabilities is not None else cpu_capabilities())]
            if "BF16" not in caps:
                raise BackendError(f"openvino: this CPU ({cpu_name()}) does not report BF16 in "
                                   f"OPTIMIZATION_CAPABILITIES (it has: {', '.join(caps) or 'none'}); "
                                   f"use precision fp32")
        self.core = ov.Core()
        if self.cache_dir is not None:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                self.core.set_property({"CACHE_DIR": str(self.cache_dir)})
            except OSError:
                self.cache_dir = None   # an unwritable cache only costs compile time
        initial = "THROUGHPUT" if self.hint == "THROUGHPUT" else "LATENCY"
        for graph in graph_names(self.manifest):
            self._compile(graph, initial)

    def _int8_model(self, graph: str):
        """Read ``graph``'s INT8 IR (xml + weights); ``load_manifest`` checked both files' sha256."""
        entry = int8_graphs(self.manifest)[graph]
        paths = []
        for key in ("file", "weights"):
            name = str(entry.get(key, ""))
            path = Path(self.model_dir) / name
            if not name or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
                raise ModelError(f"model {self.model_dir}: INT8 file {name!r} of {graph} is missing")
            paths.append(str(path))
        try:
            return self.core.read_model(*paths)
        except Exception as exc:
            raise ModelError(f"model {self.model_dir}: openvino cannot read {entry['file']} "
                             f"({one_line(exc)})") from None

    def _model(self, graph: str):
        model = self._models.get(graph)
        if model is None and self.plan[graph] in INT8_PRECISIONS:
            model = self._models[graph] = self._int8_model(graph)
        if model is None:
            path = graph_path(self.model_dir, self.manifest, "fp32", graph)
            try:
                model = self.core.read_model(str(path))
            except Exception as exc:
                raise ModelError(f"model {self.model_dir}: openvino cannot read {path.name} "
                                 f"({one_line(exc)})") from None
            listed = [io["name"] for io in self.manifest["graphs"]["fp32"][graph].get("outputs", [])]
            names = [out.get_any_name() for out in model.outputs]
            if listed and sorted(listed) != sorted(names):
                raise ModelError(f"model {self.model_dir}: {path.name} has outputs {names}, "
                                 f"manifest.json lists {listed}")
            names: set[str] = set()
            if self.plan[graph] in BF16_PRECISIONS and self.keep_fp32:
                names |= pinned_nodes(model, self.keep_fp32)
            if self.plan[graph] == TAIL:
                names |= tail_nodes(model)
            if names:
                model = pin_fp32(self.core, model, names)
                self.pinned[graph] = len(names)
            self._models[graph] = model
        return model

    def _compile(self, graph: str, hint: str):
        key = (graph, hint)
        if key in self.compiled:
            return self.compiled[key]
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.plan[graph]],
                  "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": self.num_threads}
        if self.plan[graph] == "fp32":
            config["EXECUTION_MODE_HINT"] = "ACCURACY"
        try:
            compiled = self.core.compile_model(self._model(graph), "CPU", config)
        except ModelError:
            raise
        except Exception as exc:
            raise BackendError(f"openvino cannot compile {graph} ({self.plan[graph]}): {one_line(exc)}") from None
        self.compiled[key] = compiled
        if hint == "THROUGHPUT":
            import openvino as ov

            self.requests[key] = ov.AsyncInferQueue(compiled, 0)
        else:
            self.requests[key] = compiled.create_infer_request()
        return compiled

    def deactivate_impl(self) -> None:
        """Drop the infer requests, compiled graphs and read models."""
        self.requests.clear()
        self.compiled.clear()
        self._models.clear()
        self.core = None

    # -- inference -------------------------------------------------------------------------
    def infer_impl(self, graph: str, feeds: Mapping[str, np.ndarray], host_outputs: bool) -> dict:
        """Run ``graph`` on checked host ``feeds``; numpy outputs always (a host backend). Batches above
        one run as parallel requests on the graph's THROUGHPUT twin (``hint="auto"``)."""
        batch = max((v.shape[0] for v in feeds.values() if v.ndim >= 2), default=1)
        hint = self.hint if self.hint != "auto" else ("THROUGHPUT" if batch > 1 else "LATENCY")
        compiled = self._compile(graph, hint)
        names = [out.get_any_name() for out in compiled.outputs]
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        request = self.requests[(graph, hint)]
        if hint == "LATENCY" or batch == 1:
            if hint != "LATENCY":
                request = self._latency_request(graph)
            result = request.infer(feeds)
            return {name: np.array(result[out]) for name, out in zip(names, compiled.outputs)}
        return self._infer_split(request, compiled, names, feeds, batch)

    def _latency_request(self, graph: str):
        self._compile(graph, "LATENCY")
        return self.requests[(graph, "LATENCY")]

    @staticmethod
    def _infer_split(queue, compiled, names, feeds, batch) -> dict:
        """Run a batch as parallel requests (one image each) on a THROUGHPUT-compiled graph."""
        parts: list = [None] * batch

        def done(request, index):
            parts[index] = [np.array(request.get_output_tensor(i).data) for i in range(len(names))]

        queue.set_callback(done)
        for i in range(batch):
            queue.start_async({k: (v[i:i + 1] if v.ndim >= 2 else v) for k, v in feeds.items()}, i)
        queue.wait_all()
        return {name: np.concatenate([p[j] for p in parts], axis=0) for j, name in enumerate(names)}
