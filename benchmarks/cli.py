"""`quantart bench`: speed, memory and fidelity of every backend in one report."""
from __future__ import annotations

import sys

import click

from .bench import ALL_BACKENDS, BenchError, BenchSettings, run_benchmark


class BenchUsageError(click.ClickException):
    """Bad ``quantart bench`` input: one line, exit code 2."""
    exit_code = 2


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BenchUsageError(f"--{what} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise BenchUsageError(f"--{what} must list positive integers, got {text!r}")
    return sorted(set(values))


def _sizes(text: str) -> list[tuple[int, int]]:
    """--resolutions: comma-separated N (N x N) or WxH (width x height), e.g. "1024,2048,4032x3024"."""
    from .resolution_rows import parse_size

    try:
        values = [parse_size(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise BenchUsageError(f"--resolutions must be comma-separated sizes N or WxH: {exc}") from None
    if not values:
        raise BenchUsageError(f"--resolutions must list at least one size, got {text!r}")
    return sorted(set(values), key=lambda wh: (wh[0] * wh[1], wh))


def _backends(text: str) -> list[str]:
    if text.strip() == "all":
        return list(ALL_BACKENDS)
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown or not names:
        raise BenchUsageError(f"unknown backend(s) {', '.join(unknown) or text!r}; choose from "
                              f"{', '.join(ALL_BACKENDS)} or 'all'")
    return names


@click.command("bench")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Exported model directory.")
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Torch checkpoint for the torch backends and the FP32 reference "
                   "(default: manifest.json's source checkpoint).")
@click.option("--backends", default="all", show_default=True,
              help=f"Comma-separated: {', '.join(ALL_BACKENDS)}, or 'all'.")
@click.option("--resolutions", default="256,512", show_default=True,
              help="Content sizes: N (N x N) or WxH, comma-separated. Squares up to the model's max_res run "
                   "the backend matrix; larger or non-square sizes get the resolution rows (untiled vs "
                   "streaming vs naive tiles).")
@click.option("--resolution-rows", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Rows per size with time, peak RSS, temp disk and fidelity vs untiled, for untiled, the "
                   "streaming executor and diffusers-style naive tiles (auto: when a size is above max_res or "
                   "not square).")
@click.option("--naive-tile", type=click.IntRange(min=1), default=512, show_default=True,
              help="Tile side (px) of the naive tiling row.")
@click.option("--batch-sizes", default="1,8,32", show_default=True)
@click.option("--style-cache", type=click.Choice(["on", "off", "both"]), default="both", show_default=True,
              help="off: every batch encodes its style; on: the style is encoded once and reused.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True,
              help="Untimed calls per configuration (at least one runs; peak RSS is sampled there).")
@click.option("--iters", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed calls per configuration.")
@click.option("--peak-flops", default=None,
              help="Device peak FLOP/s for the roofline (e.g. 2.5e12 or 800G); default: measured with a large matmul.")
@click.option("--no-breakdown", is_flag=True, help="Skip the per-graph latency breakdown.")
@click.option("--out", "out_dir", default="bench_results", show_default=True, type=click.Path(),
              help="Report directory (NAME.json, NAME.md, NAME_*.png).")
@click.option("--name", "stem", default="bench", show_default=True, help="File name stem of the report.")
def bench(model_dir, checkpoint, backends, resolutions, resolution_rows, naive_tile, batch_sizes, style_cache,
          warmup, iters, peak_flops, no_breakdown, out_dir, stem):
    """Benchmark every available backend: latency, throughput, memory, fidelity, roofline.

    Each backend runs in its own process (its peak memory is its own). Backends that cannot run here
    are listed as skipped, with the reason. Exit code 2 on bad input.
    """
    peak = None
    if peak_flops is not None:
        from .flops import parse_flops
        try:
            peak = parse_flops(peak_flops)
        except ValueError:
            raise BenchUsageError(f"--peak-flops must be a positive number like 2.5e12 or 800G, "
                                  f"got {peak_flops!r}") from None
    settings = BenchSettings(
        model_dir=model_dir, out_dir=out_dir, checkpoint=checkpoint, backends=_backends(backends),
        resolutions=_sizes(resolutions), resolution_rows=resolution_rows, naive_tile=naive_tile,
        batch_sizes=_ints(batch_sizes, "batch-sizes"),
        style_cache=["off", "on"] if style_cache == "both" else [style_cache], warmup=warmup, iters=iters,
        peak_flops=peak, graph_breakdown=not no_breakdown, report_name=stem)
    try:
        rep = run_benchmark(settings, log=lambda msg: click.echo(msg, err=True))
    except BenchError as exc:
        raise BenchUsageError(str(exc)) from None
    from .report import markdown
    click.echo(markdown(rep))
    click.echo(f"report written to {out_dir}/{rep['files']['markdown']} and {rep['files']['json']}", err=True)


if __name__ == "__main__":
    sys.exit(bench())
