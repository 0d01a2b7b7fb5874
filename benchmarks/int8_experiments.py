"""What keeps the encoders' tokens under INT8 (issue 23, item 3): NNCF options tried one at a time.

    python -m quantart_benchmarks.int8_experiments --model DIR --calibration CAL/ --out benchmarks/results/NAME

For each quantized graph (content encoder, decoder; ``--graphs``) and each variant below, blanket INT8
(``nncf.quantize``, no layer reverted) with that one change, judged by the export's own gate on the
held-out validation images (the same seeded, disjoint split ``quantart-export --int8-calibration`` makes:
token agreement with near-ties forgiven, or decoder PSNR):

  baseline            per-channel weights, fast bias correction, MIXED preset (the export's settings)
  per-tensor          per-tensor weights
  fp32-groupnorm      every GroupNorm (OpenVINO MVN) kept FP32
  last-stage-fp32     the encoder's lowest-resolution stage (mid block, attention, head) / the decoder's
                      full-resolution stage kept FP32
  smoothquant         SmoothQuant (alpha 0.95 on convolutions and matmuls)
  full-bias-corr      NNCF's full BiasCorrection instead of the fast one
  more-calibration    three times the calibration views (more seeded crops of the same images)

Also, per graph, the accuracy-control sensitivity ranking (``--ranking``: the metric with each group of
quantizers alone reverted to FP32, top 10), as the export records it. Writes ``<out>.json`` / ``<out>.md``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

VARIANTS = ("baseline", "per-tensor", "fp32-groupnorm", "last-stage-fp32", "smoothquant", "full-bias-corr",
            "more-calibration")


def last_stage(model, graph: str) -> set[str]:
    """Weighted ops of the encoder's lowest-resolution stage (after its last stride-2 convolution) or the
    decoder's full-resolution stage (after its last upsampling)."""
    from quantart_export.int8_accuracy import WEIGHTED_OPS

    ops = list(model.get_ordered_ops())
    if graph == "decoder":
        cut = max(i for i, op in enumerate(ops) if op.get_type_name() == "Interpolate")
    else:
        cut = max(i for i, op in enumerate(ops) if op.get_type_name() == "Convolution"
                  and list(op.get_attributes().get("strides", [1, 1])) == [2, 2])
    return {op.get_friendly_name() for op in ops[cut + 1:] if op.get_type_name() in WEIGHTED_OPS}


def options_for(variant: str, model, graph: str):
    """The ``int8_accuracy.Options`` of one variant (blanket INT8: no layer reverted)."""
    from quantart_export.int8_accuracy import Options

    o = Options(max_fp32_layers=0, smooth_quant=False)   # the baseline: NNCF's defaults
    if variant == "per-tensor":
        o.per_channel = False
    elif variant == "fp32-groupnorm":
        o.ignored_types = ("MVN",)
    elif variant == "last-stage-fp32":
        o.extra_ignored = last_stage(model, graph)
    elif variant == "smoothquant":
        o.smooth_quant = True
    elif variant == "full-bias-corr":
        o.fast_bias_correction = False
    return o


def main(argv=None) -> int:
    """Run the variants (see the module docstring) and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--graphs", default="content_encoder,decoder")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--ranking", action="store_true", help="also run accuracy control for the sensitivity ranking")
    args = ap.parse_args(argv)

    import nncf
    import numpy as np
    import openvino as ov

    from quantart_export.int8 import _content_codebook, accuracy_controlled, calibration_samples, check_int8_setup
    from quantart_export.int8_accuracy import MAX_FP32_LAYERS, Options
    from quantart_export.int8_data import load_images, split_images
    from quantart_runtime.verify import cpu_model

    nncf.set_log_level(logging.ERROR)
    directory = Path(args.model)
    manifest = json.loads((directory / "manifest.json").read_text())
    size = int(manifest["profile"]["opt_res"])
    split = split_images(check_int8_setup(args.calibration, manifest["kind"]))
    cal = load_images(split.calibration, size, augment=True, seed=split.seed)
    more = np.concatenate([cal] + [load_images(split.calibration, size, augment=True, seed=split.seed + k)
                                   for k in (1, 2)])
    val = load_images(split.validation, size)
    core = ov.Core()
    samples = {"baseline": calibration_samples(core, directory, manifest, cal),
               "more-calibration": calibration_samples(core, directory, manifest, more)}
    validation = calibration_samples(core, directory, manifest, val)
    codebook = _content_codebook(directory, manifest)
    record = {"model": str(directory), "cpu": cpu_model(), "openvino": ov.__version__, "nncf": nncf.__version__,
              "resolution": size, "calibration_images": len(split.calibration), "calibration_views": len(cal),
              "more_calibration_views": len(more), "validation_images": len(split.validation), "rows": [],
              "ranking": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for graph in args.graphs.split(","):
        model = core.read_model(str(directory / manifest["graphs"]["fp32"][graph]["file"]))
        for variant in args.variants.split(","):
            t0 = time.perf_counter()
            cal_set = samples["more-calibration" if variant == "more-calibration" else "baseline"][graph]
            r = accuracy_controlled(core, directory, manifest, graph, cal_set, validation[graph], codebook,
                                    options_for(variant, model, graph))
            row = {"graph": graph, "variant": variant, "metric": r["metric"], "value": r["value"], "gate": r["gate"],
                   "passed": r["passed"], "int8_layers": len(r["int8_layers"]), "fp32_layers": len(r["fp32_layers"]),
                   "seconds": time.perf_counter() - t0}
            record["rows"].append(row)
            print(json.dumps(row), flush=True)
            _write(out, record)
        if args.ranking:
            t0 = time.perf_counter()
            r = accuracy_controlled(core, directory, manifest, graph, samples["baseline"][graph], validation[graph],
                                    codebook, Options(max_fp32_layers=MAX_FP32_LAYERS, smooth_quant=False))
            record["ranking"][graph] = {"value": r["value"], "passed": r["passed"], "reverted": r["reverted"],
                                        "top": r["ranking"], "groups": len(r["ranking_all"]),
                                        "seconds": time.perf_counter() - t0}
            print(json.dumps(record["ranking"][graph])[:400], flush=True)
            _write(out, record)
    print(_write(out, record))
    return 0


def _write(out: Path, record: dict) -> str:
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    lines = [f"# INT8 variants — {record['model']}", "",
             f"CPU {record['cpu']}; OpenVINO {record['openvino']}, NNCF {record['nncf']}; {record['resolution']}²; "
             f"{record['calibration_images']} calibration images ({record['calibration_views']} views; "
             f"more-calibration: {record['more_calibration_views']}), {record['validation_images']} held-out "
             "validation images. Blanket INT8 with one change per row, judged by the export's gate.", "",
             "| graph | variant | metric | value | gate | passes | INT8 layers | FP32 layers | s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        value = f"{100 * r['value']:.2f} %" if r["metric"] == "token agreement" else f"{r['value']:.2f} dB"
        lines.append(f"| {r['graph']} | {r['variant']} | {r['metric']} | {value} | {r['gate']:g} | "
                     f"{'yes' if r['passed'] else 'no'} | {r['int8_layers']} | {r['fp32_layers']} | "
                     f"{r['seconds']:.0f} |")
    for graph, rk in record["ranking"].items():
        lines += ["", f"## Sensitivity ranking, {graph} (accuracy control: {rk['groups']} quantizer groups ranked; "
                      f"final {rk['value']:.4g}, {'passes' if rk['passed'] else 'fails'} with {len(rk['reverted'])} "
                      f"layers reverted, {rk['seconds']:.0f} s)", "",
                  "| rank | metric with this group alone FP32 | layers |", "|---|---|---|"]
        for i, t in enumerate(rk["top"], 1):
            more = " …" if len(t["layers"]) > 6 else ""
            lines.append(f"| {i} | {t['metric']:.4g} | {', '.join(t['layers'][:6])}{more} |")
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
