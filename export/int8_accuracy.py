"""NNCF accuracy control for one graph, judged by our gate on held-out validation images.

``nncf.quantize_with_accuracy_control`` quantizes the whole graph (as ``nncf.quantize``), measures it
with a validation function, and while the metric's drop from the FP32 graph exceeds ``max_drop`` it
ranks the groups of quantizers by how much reverting each one (alone) restores the metric, and
reverts the worst group to FP32, greedily, at most ``max_num_iterations`` times (our limit of FP32
layers). Our validation functions (``GraphGate``) are the precision gate itself, against the FP32
graph's outputs on the validation images:

* content_encoder: token agreement of the nearest content codes (float64, near-ties of the FP32
  latent forgiven as export verification does, ``quantart_runtime.tokens``) ≥ 99 %;
* style_encoder: agreement of its output tokens ≥ 99 %;
* decoder: image PSNR (uint8, as the runtime post-processes) ≥ 30 dB, capped at ``PSNR_CAP_DB`` so
  that the FP32 graph's own score is a number.

The FP32 graph scores 1.0 (or the cap) against itself, so ``max_drop`` = score − gate makes NNCF stop
exactly at the gate. The first ranking (the fully quantized graph, each group reverted alone) is kept
as the sensitivity ranking (``ranking``): NNCF does not return it, so its ranking step is wrapped for
the duration of the call (``_capture_ranking``).
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

import numpy as np

from quantart_runtime.tokens import nearest_codes, tie_tolerant_agreement

TOKEN_GATE = 0.99
PSNR_GATE_DB = 30.0
PSNR_CAP_DB = 40.0
MAX_FP32_LAYERS = 12          # default limit: layers (quantizer groups) accuracy control may revert
RANKING_TOP = 10
WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")
OUTPUT = {"content_encoder": "content_latent", "style_encoder": "style_indices", "decoder": "image"}
F32 = {"INFERENCE_PRECISION_HINT": "f32"}   # as NNCF compiles the graphs it validates


def _image_u8(image: np.ndarray) -> np.ndarray:
    return np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


class GraphGate:
    """The validation function of one graph: ``gate(compiled_model, items) -> (metric, per-item values)``
    against the FP32 graph's outputs (``fp32``, one per validation item); items are (index, feeds)."""

    def __init__(self, graph: str, fp32: list[np.ndarray], codebook: np.ndarray | None = None):
        self.graph, self.fp32, self.codebook = graph, fp32, codebook
        self.metric = "image PSNR dB" if graph == "decoder" else "token agreement"
        self.gate = PSNR_GATE_DB if graph == "decoder" else TOKEN_GATE
        self.best = PSNR_CAP_DB if graph == "decoder" else 1.0
        if graph == "content_encoder":
            self.tokens = [nearest_codes(z, codebook) for z in fp32]

    @property
    def max_drop(self) -> float:
        """The drop from the FP32 graph's own score that still meets the gate."""
        return self.best - self.gate

    def item(self, i: int, out: np.ndarray) -> tuple[float, float]:
        """(score, weight) of validation item ``i`` given the graph's output."""
        ref = self.fp32[i]
        if self.graph == "content_encoder":
            ours = nearest_codes(out, self.codebook)
            return tie_tolerant_agreement(ours, self.tokens[i], ref, self.codebook)[0], float(ours.size)
        if self.graph == "style_encoder":
            return float(np.mean(out == ref)), float(ref.size)
        return float(np.mean((_image_u8(out).astype(np.float64) - ref) ** 2)), float(ref.size)

    def __call__(self, compiled, items) -> tuple[float, list[float]]:
        scores, weights = [], []
        for i, feeds in items:
            score, weight = self.item(i, np.asarray(compiled(feeds)[OUTPUT[self.graph]]))
            scores.append(score)
            weights.append(weight)
        w = np.asarray(weights)
        pooled = float(np.sum(np.asarray(scores) * w) / np.sum(w))
        if self.graph != "decoder":
            return pooled, scores
        from quantart_runtime.util import psnr_from_mse

        return psnr_from_mse(pooled, 255.0, PSNR_CAP_DB), [psnr_from_mse(s, 255.0, PSNR_CAP_DB) for s in scores]


def fp32_outputs(core, model, graph: str, feeds: list[dict]) -> list[np.ndarray]:
    """The FP32 graph's outputs on ``feeds`` (what its gate compares with); images as uint8."""
    compiled = core.compile_model(model, "CPU", F32)
    outs = [np.asarray(compiled(f)[OUTPUT[graph]]) for f in feeds]
    return [_image_u8(o) for o in outs] if graph == "decoder" else outs


@contextlib.contextmanager
def _capture_ranking(into: list):
    """Record NNCF's first ranking: (score, operation names) per group of quantizers."""
    from nncf.quantization.algorithms.accuracy_control.ranker import Ranker

    seq = Ranker._sequential_calculation_ranking_score

    def sequential(self, model, graph, groups, indices, reference):
        scores = seq(self, model, graph, groups, indices, reference)
        if not into:
            into.extend((float(s), [n.node_name for n in g.operations]) for s, g in zip(scores, groups))
        return scores

    Ranker._sequential_calculation_ranking_score = sequential
    try:
        yield
    finally:
        Ranker._sequential_calculation_ranking_score = seq


def layer_precisions(model, ignored: set[str]) -> tuple[list[str], list[str]]:
    """(INT8 layers, FP32 layers) of a quantized ``ov.Model``: the convolutions and matmuls whose
    activation input comes from a FakeQuantize run INT8; the others (outside ``ignored``) stay FP32."""
    int8, fp32 = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHTED_OPS or op.get_friendly_name() in ignored:
            continue
        src = op.input(0).get_source_output().get_node()
        (int8 if src.get_type_name() == "FakeQuantize" else fp32).append(op.get_friendly_name())
    return int8, fp32


@dataclass
class Options:
    """What accuracy control may do (item 3's experiments vary these)."""
    max_fp32_layers: int = MAX_FP32_LAYERS
    per_channel: bool = True            # weights per output channel (NNCF's default for convolutions)
    # SmoothQuant (model type TRANSFORMER, alpha 0.95 on matmuls and convolutions): on by default, measured
    # best of the item-3 variants on the demo model (blanket INT8: content tokens 71.7 -> 89.8 %, decoder
    # 29.8 -> 36.4 dB; benchmarks/results/int8_variants_demo.md)
    smooth_quant: bool = True
    fast_bias_correction: bool = True   # False: NNCF's full BiasCorrection
    extra_ignored: set = field(default_factory=set)   # layers kept FP32 from the start (e.g. the last stage)
    ignored_types: tuple = ()           # op types kept FP32 from the start (e.g. ("MVN",): GroupNorm)


def _advanced(options: Options):
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
        QuantizationParameters,
    )

    kwargs = {}
    if not options.per_channel:
        kwargs["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    if options.smooth_quant:
        kwargs["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(convolution=0.95, matmul=0.95)
    return AdvancedQuantizationParameters(**kwargs)


def quantize_accurate(core, model, graph: str, calibration: list[dict], validation: list[dict], gate: GraphGate,
                      ignored: set[str], options: Options | None = None) -> dict:
    """Accuracy-controlled INT8 of one ``ov.Model``: {"model", "value", "passed", "int8_layers",
    "fp32_layers", "ranking" (top ``RANKING_TOP``: metric with that group alone FP32, and its layers),
    "ranking_all" [(metric, layers)]} (``value``: the gate's metric on the validation items)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    options = options or Options()
    names = sorted(ignored | set(options.extra_ignored))
    scope = (nncf.IgnoredScope(names=names, types=list(options.ignored_types), validate=False)
             if names or options.ignored_types else None)
    items = list(enumerate(validation))
    ranking: list = []
    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=options.max_fp32_layers,
                                                  num_ranking_workers=1)
    common = dict(preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
                  fast_bias_correction=options.fast_bias_correction, ignored_scope=scope,
                  model_type=nncf.ModelType.TRANSFORMER if options.smooth_quant else None,
                  advanced_quantization_parameters=_advanced(options))
    with contextlib.redirect_stdout(sys.stderr), _capture_ranking(ranking):
        if options.max_fp32_layers < 1:   # no layer may go back: blanket INT8, judged by the same gate
            common["advanced_parameters"] = common.pop("advanced_quantization_parameters")
            quantized = nncf.quantize(model, nncf.Dataset(calibration), **common)
        else:
            quantized = nncf.quantize_with_accuracy_control(
                model, nncf.Dataset(calibration), nncf.Dataset(items, lambda item: item[1]), validation_fn=gate,
                max_drop=gate.max_drop, drop_type=nncf.DropType.ABSOLUTE,
                advanced_accuracy_restorer_parameters=restorer, **common)
    value, _ = gate(core.compile_model(quantized, "CPU", F32), items)
    int8, fp32 = layer_precisions(quantized, set(ignored))
    ranked = sorted(ranking, key=lambda r: -r[0])[:RANKING_TOP]
    return {"model": quantized, "value": float(value), "passed": bool(value >= gate.gate), "int8_layers": int8,
            "fp32_layers": fp32, "ranking": [{"metric": s, "layers": ops} for s, ops in ranked],
            "ranking_all": ranking}
