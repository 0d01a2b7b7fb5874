"""`quantart-export CKPT`: a QuantArt checkpoint → a verified ONNX model directory.

Exit codes: 0 written; 1 verification failed (nothing written); 2 bad input (missing or unreadable
checkpoint, unsupported architecture, bad option, unwritable or existing output; nothing written).
Errors are one line on stderr; progress goes to stderr, the verification table to stdout.
"""
from __future__ import annotations

import logging
import sys
import warnings

import click

PROG = "quantart-export"


def _fail(message: str, code: int):
    click.echo(f"{PROG}: error: {message}", err=True)
    sys.exit(code)


class _OneLineErrors(click.Command):
    """A click command whose usage errors are one line on stderr (exit code 2), like ours."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name or PROG, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _fail("aborted", 1)
        except click.ClickException as exc:
            _fail(" ".join(exc.format_message().split()), exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


def _resolutions(_ctx, _param, value):
    if value is None:
        return None
    out = []
    for item in value.split(","):
        try:
            h, w = (int(v) for v in item.lower().strip().split("x"))
        except ValueError:
            raise click.BadParameter(f"{item!r} is not HxW (e.g. 128x128,96x128)") from None
        out.append((h, w))
    return out


def _thresholds(_ctx, _param, values):
    out = {}
    for item in values:
        key, sep, val = item.partition("=")
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not NAME=NUMBER") from None
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=NUMBER")
    return out


@click.command(PROG, cls=_OneLineErrors)
@click.argument("checkpoint", metavar="CKPT")
@click.option("--out", "out_dir", metavar="DIR", help="Output directory (default: <CKPT name>_onnx beside CKPT).")
@click.option("--config", metavar="YAML", help="Official QuantArt YAML config (default: inferred from the weights).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "both"]), default="fp32", show_default=True,
              help="fp16: convolutions and matmuls FP16; GroupNorm, softmax and nearest-codebook FP32.")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18).")
@click.option("--min-res", type=int, default=None, help="TensorRT profile: smallest side (default: latent stride).")
@click.option("--opt-res", type=int, default=None, help="TensorRT profile: optimal side (default 256).")
@click.option("--max-res", type=int, default=None, help="TensorRT profile: largest side (default 1024).")
@click.option("--max-batch", type=int, default=None, help="TensorRT profile: largest batch (default 32).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare every graph with PyTorch on the sample images (ONNX Runtime, CPU).")
@click.option("--verify-res", callback=_resolutions, metavar="HxW[,HxW...]",
              help="Verification resolutions (default 128x128,96x128).")
@click.option("--threshold", "thresholds", multiple=True, callback=_thresholds, metavar="NAME=VALUE",
              help="Override a verification threshold (fp32_latent_max_abs, fp32_token_agreement, "
                   "fp32_psnr_db, fp16_token_agreement, fp16_psnr_db).")
@click.option("--int8-calibration", "int8_calibration", metavar="DIR", default=None,
              help="Also write INT8 OpenVINO IR of the encoders and decoder (NNCF accuracy control: DIR is split, "
                   "seeded, into calibration and held-out validation images; the most sensitive layers go back "
                   "to FP32 until tokens >= 99 % / PSNR >= 30 dB; needs quantart[int8]); each is kept only if "
                   "it also passes the precision gate on the stored references.")
@click.option("--int8-max-fp32-layers", "int8_max_fp32_layers", type=int, default=None, metavar="N",
              help="With --int8-calibration: at most N layers (quantizer groups) per graph that NNCF accuracy "
                   "control may revert to FP32 before the graph is given up (default 12).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow arbitrary unpickling (only for trusted files).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
def main(checkpoint, out_dir, config, precision, opset, min_res, opt_res, max_res, max_batch, verify, verify_res,
         thresholds, int8_calibration, int8_max_fp32_layers, trust_checkpoint, force):
    """Export CKPT (Stage 1 VQGAN or Stage 2 QuantArt, any format quantart.load_model reads) to ONNX:
    content_encoder, style_encoder, sga and decoder graphs (Stage 1: encoder and decoder) and manifest.json."""
    from .pipeline import ExportError, VerificationError, export_model

    # errors are exactly one line on stderr: library warnings (torch.load, onnx export) are silenced
    warnings.simplefilter("ignore")
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        path = export_model(checkpoint, out_dir=out_dir, config=config, precision=precision, opset=opset,
                            min_res=min_res, opt_res=opt_res, max_res=max_res, max_batch=max_batch,
                            verify=verify, force=force, trust=trust_checkpoint, verify_res=verify_res,
                            thresholds=thresholds or None, int8_calibration=int8_calibration,
                            int8_max_fp32_layers=int8_max_fp32_layers,
                            log=lambda msg: click.echo(msg, err=True),
                            report=click.echo)
    except ExportError as exc:
        _fail(str(exc), 2)
    except VerificationError as exc:
        _fail(f"{exc}; nothing written", 1)
    click.echo(str(path))
    return 0


if __name__ == "__main__":
    main()
