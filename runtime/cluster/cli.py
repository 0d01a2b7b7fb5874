"""``quantart stylize-dataset`` (Ray Data) and ``quantart serve`` (Ray Serve).

Exit codes: 0 all good; 1 some inputs failed (listed in the failures file); 2 bad model, style
image, input path or options (one line on stderr)."""
from __future__ import annotations

import sys
import time

import click

from ..core import OUTPUT_FORMATS
from ..errors import ImageError, ModelError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command("stylize-dataset")
@click.option("--model", "model_dir", required=True, help="Model directory written by quantart-export.")
@click.option("--style", required=True, help="Style image (path or URI).")
@click.argument("input")
@click.argument("output")
@click.option("--address", default=None,
              help="Ray cluster: 'auto' (this machine's), 'ray://HOST:10001'; default: a local Ray.")
@click.option("--num-workers", type=click.IntRange(min=1), default=None,
              help="Actors, each holding one model (default: as many as the CPUs/GPUs allow).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--cpus-per-worker", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images per actor call (and per runtime batch).")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--content-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--output-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--style-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Shorter side of the style image when it is encoded.")
@click.option("--ext", type=click.Choice(OUTPUT_FORMATS), default="same", show_default=True,
              help="Output format; 'same' keeps the input's extension when writable (as quantart stylize).")
@click.option("--format", "legacy_format", type=click.Choice(OUTPUT_FORMATS), default=None, hidden=True,
              help="Old name of --ext.")
@click.option("--max-side", type=click.IntRange(min=0), default=None,
              help="Downscale inputs whose longer side exceeds N pixels (aspect kept). Default: no cap: "
                   "inputs above the memory budget stream at full size, exactly (older exports: the model's "
                   "max_res, and downscaled to the budget). 0: never resize (what cannot run fails and is "
                   "listed).")
@click.option("--memory-budget", default=None, metavar="BYTES|FRACTION",
              help="Peak working memory per request on each worker: bytes (6G) or a fraction of the "
                   "worker's available memory (0.3). Default: $QUANTART_MEMORY_BUDGET, else half.")
@click.option("--failures", "failures_file", default=None,
              help="Failures file (JSON lines); default OUTPUT/failures.jsonl.")
@click.option("--retries", "max_task_retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries of a batch whose worker died.")
@click.option("--no-progress", is_flag=True, help="Hide Ray Data's progress bars.")
def stylize_dataset(model_dir, style, input, output, address, num_workers, gpus_per_worker,
                    cpus_per_worker, batch_size, backend, precision, content_ratio, output_ratio,
                    style_size, ext, legacy_format, max_side, memory_budget, failures_file,
                    max_task_retries, no_progress):
    """Stylize every image under INPUT into OUTPUT (same names) on Ray Data; reruns skip finished outputs."""
    from .batch import stylize_dataset as run

    try:
        summary = run(model_dir, style, input, output, address=address, num_workers=num_workers,
                      gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                      batch_size=batch_size, backend=backend, precision=precision,
                      content_ratio=content_ratio, output_ratio=output_ratio, style_size=style_size,
                      ext=legacy_format or ext, max_side=max_side, resize=max_side != 0,
                      memory_budget=memory_budget, failures_file=failures_file,
                      max_task_retries=max_task_retries, progress=not no_progress)
    except ModelError as exc:
        _fail(str(exc))
    except ImageError as exc:
        _fail(f"style image {style}: {exc}")
    except (OSError, ValueError) as exc:
        _fail(f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror and exc.filename
              else str(exc))
    for path, reason in summary.failures:
        click.echo(f"failed: {path}: {reason}", err=True)
    click.echo(str(summary))
    if summary.failed:
        click.echo(f"failures listed in {summary.failures_file}", err=True)
        sys.exit(1)


@click.command("serve")
@click.option("--model", "model_dir", required=True, help="Model directory written by quantart-export.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 exposes the service to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--address", default=None, help="Ray cluster to join ('auto', 'ray://...'); default: a local Ray.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--cpus-per-replica", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--gpus-per-replica", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True,
              help="Larger request bodies get 413.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4096 * 4096, show_default=True,
              help="Larger images (by their header) get 400.")
@click.option("--timeout", "request_timeout_s", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds per request before 504.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--max-ongoing-requests", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight per replica.")
@click.option("--max-queued-requests", type=click.IntRange(min=-1), default=64, show_default=True,
              help="Requests waiting for a replica before 503 (-1: unbounded).")
@click.option("--style-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--memory-budget", default=None, metavar="BYTES|FRACTION",
              help="Peak working memory per request on each replica (6G, or a fraction such as 0.3); larger "
                   "contents stream at full size, exactly, within it; only what cannot stream within it is "
                   "downscaled (X-Quantart-Resized) or, with resize=false, refused (413).")
@click.option("--sample-styles", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Register sample styles at start (listed by GET /v1/styles and on the page): the "
                   "sample artworks shipped in the package, or the images in DIR.")
def serve(model_dir, host, port, replicas, address, backend, precision, cpus_per_replica,
          gpus_per_replica, max_body_mb, max_pixels, request_timeout_s, max_batch_size, batch_wait_ms,
          max_ongoing_requests, max_queued_requests, style_size, memory_budget, sample_styles):
    """Serve the page at / and POST /v1/stylize, GET|POST /v1/styles, GET /v1/health over HTTP
    (Ray Serve); Ctrl-C stops."""
    from .serve import start_service
    from .web import SAMPLE_STYLES

    if sample_styles == "":
        sample_styles = SAMPLE_STYLES

    try:
        url = start_service(model_dir, host=host, port=port, address=address, replicas=replicas,
                            cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica,
                            max_ongoing_requests=max_ongoing_requests,
                            max_queued_requests=max_queued_requests, backend=backend,
                            precision=precision, style_size=style_size,
                            max_body_bytes=int(max_body_mb * (1 << 20)), max_pixels=max_pixels,
                            request_timeout_s=request_timeout_s, max_batch_size=max_batch_size,
                            batch_wait_timeout_s=batch_wait_ms / 1000.0, sample_styles=sample_styles,
                            memory_budget=memory_budget)
    except ModelError as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc))
    click.echo(f"serving on {url} (page at {url}/; POST /v1/stylize, GET|POST /v1/styles, GET /v1/health); "
               "Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve as ray_serve

        ray_serve.shutdown()
