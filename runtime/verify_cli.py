"""`quantart verify DIR --backend B --precision P`: judge a backend and precision on a model's stored
references (no torch) and print the per-graph checks and the resulting precision plan.

Exit codes: 0 the plan was made (printed, and cached for ``backend="auto"``); 2 the model directory,
backend or precision is unusable (one line on stderr).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("verify")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(["openvino", "onnxruntime", "tensorrt"]), default="openvino",
              show_default=True, help="Backend to judge.")
@click.option("--precision", type=click.Choice(["bf16", "int8", "fp16", "fp32"]), default="bf16", show_default=True,
              help="Precision to judge per graph (bf16, int8: openvino, int8 only for graphs with an INT8 IR "
                   "from quantart-export --int8-calibration; fp16: onnxruntime / tensorrt).")
@click.option("--refresh", is_flag=True, help="Verify again even when a cached plan exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(model_dir, backend, precision, refresh, as_json):
    """Verify MODEL_DIR's graphs at PRECISION on BACKEND against the stored FP32 references.

    Each graph is fed the FP32 reference inputs and judged (token agreement ≥ 99 %, image PSNR ≥ 30 dB),
    then the chain with the resulting plan. The plan (fastest passing precision per graph) is cached per
    (model, backend, precision, CPU model) in the user cache directory.
    """
    from .errors import ModelError
    from .util import one_line
    from .verify import format_checks, plan_for

    try:
        result = plan_for(model_dir, backend, precision, refresh=refresh)
    except (ModelError, TypeError) as exc:
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({**result.as_dict(), "cached": result.cached}, indent=2))
    else:
        click.echo(format_checks(result))
        click.echo(f"cpu: {result.cpu}" + ("  (cached plan; --refresh to verify again)" if result.cached else ""))
