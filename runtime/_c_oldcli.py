"""`quantart stylize`: stylize files, directories or globs with an exported model (no torch).

Exit codes: 0 all done (or skipped); 1 some files failed (each reported with its name and reason,
the others still written); 2 the model directory, backend, style image, output directory or
arguments are unusable (one line on stderr, nothing processed).
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from .errors import ImageError, ModelError
from .files import OUTPUT_EXTENSIONS, collect_inputs, overwritten_input, plan_outputs
from .images import check_min_size, fit_max_side, load_image, save_image


def _fail_setup(message: str):
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _Run:
    """Counts and reports outcomes without garbling the progress bar."""

    def __init__(self, bar):
        self.bar = bar
        self.done = self.failed = self.skipped = 0

    def fail(self, name, reason: str) -> None:
        self.failed += 1
        self.bar.write(f"failed: {name}: {reason}", file=sys.stderr)
        self.bar.update(1)

    def ok(self) -> None:
        self.done += 1
        self.bar.update(1)

    def skip(self) -> None:
        self.skipped += 1
        self.bar.update(1)

    def summary(self) -> str:
        return f"done {self.done}, failed {self.failed}, skipped {self.skipped}"


def _load(job, max_side, stride):
    """-> (job, image or None, reason or None); runs in a worker thread."""
    try:
        image = fit_max_side(load_image(job.source), max_side)
        check_min_size(image.shape[0], image.shape[1], stride)
        return job, image, None
    except ImageError as exc:
        return job, None, str(exc)
    except MemoryError:
        return job, None, "image too large to decode in memory"


def _save(job, image, quality):
    try:
        job.output.parent.mkdir(parents=True, exist_ok=True)
        save_image(image, job.output, quality=quality)
        return job, None
    except (OSError, ValueError) as exc:
        return job, f"cannot write {job.output}: {_one_line(exc)}"


def _stylize_window(stylizer, loaded, code, options, run):
    """Stylize one window of loaded images; a failing batch is retried image by image so that one
    bad input cannot take the others down."""
    images = [img for _, img in loaded]
    try:
        return list(zip([job for job, _ in loaded], stylizer.stylize(images, code, **options)))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:
        pass
    results = []
    for job, img in loaded:
        try:
            results.append((job, stylizer.stylize(img, code, **options)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            run.fail(job.source, f"stylization failed: {_one_line(exc)}")
    return results


@click.command("stylize")
@click.option("--model", "-m", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory written by quantart-export.")
@click.option("--style", "-s", "style_path", required=True, type=click.Path(path_type=Path),
              help="Style image.")
@click.argument("contents", nargs=-1, required=True)
@click.option("--out-dir", "-o", type=click.Path(path_type=Path), default=Path("stylized"), show_default=True,
              help="Output directory (a directory input keeps its sub-folders). Must not overwrite an input.")
@click.option("--ext", type=click.Choice(["same", *OUTPUT_EXTENSIONS]), default="same", show_default=True,
              help="Output format; 'same' keeps a PNG/JPEG/WebP input's extension, else PNG.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG/WebP quality.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "cpu"]), default="auto",
              show_default=True, help="auto: TensorRT if available, else ONNX Runtime (CUDA, else CPU); "
                                      "cpu: ONNX Runtime on the CPU.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per graph call (images of equal padded size are batched). Default: by image size.")
@click.option("--content-ratio", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Discrete-continuous fusion of the SGA input (1 = fully quantized).")
@click.option("--output-ratio", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Discrete-continuous fusion of the SGA output (1 = fully quantized).")
@click.option("--max-side", type=click.IntRange(min=0), default=None,
              help="Downscale contents whose longer side exceeds N pixels (aspect kept; the output has the "
                   "downscaled size). Default: the model's max_res; 0: never.")
@click.option("--style-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="The style image's shorter side is resized to this before encoding.")
@click.option("--skip-existing", is_flag=True, help="Skip contents whose output file already exists.")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="Search directories recursively.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def stylize(model_dir, style_path, contents, out_dir, ext, quality, backend, device, precision, batch_size,
            content_ratio, output_ratio, max_side, style_size, skip_existing, recursive, progress):
    """Stylize CONTENT images (files, directories or globs) with an exported model.

    Transparent images are composited on white. Exit code 1 if any file failed, 2 if the model,
    style image or output directory is unusable.
    """
    from tqdm import tqdm

    from .stylizer import Stylizer

    jobs, missing = collect_inputs(contents, recursive=recursive)
    if not jobs and not missing:
        _fail_setup(f"no images found in {', '.join(contents)}")
    if out_dir.exists() and not out_dir.is_dir():
        _fail_setup(f"output directory {out_dir} is an existing file")
    plan_outputs(jobs, out_dir, ext)
    clash = overwritten_input(jobs, [style_path])
    if clash:
        _fail_setup(f"output {clash[0]} would overwrite the input {clash[1]}; choose another --out-dir or --ext")

    try:
        if backend == "cpu":
            stylizer = Stylizer.load(model_dir, backend="onnxruntime", device=device,
                                     providers=["CPUExecutionProvider"], precision=precision)
        else:
            stylizer = Stylizer.load(model_dir, backend=backend, device=device, precision=precision)
    except ModelError as exc:
        _fail_setup(str(exc))
    try:
        code = stylizer.encode_style(load_image(style_path), size=style_size)
    except ImageError as exc:
        _fail_setup(f"style image {style_path}: {exc}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail_setup(f"cannot create output directory {out_dir}: {exc.strerror or exc}")
    if max_side is None:
        max_side = stylizer.max_res
    options = dict(content_ratio=content_ratio, output_ratio=output_ratio, batch_size=batch_size)

    bar = tqdm(total=len(jobs) + len(missing), unit="img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    run = _Run(bar)
    for arg, reason in missing:
        run.fail(arg, reason)
    todo = []
    for job in jobs:
        if skip_existing and job.output.exists():
            run.skip()
        else:
            todo.append(job)
    window = max(8, 2 * (batch_size or 8))
    windows = [todo[i:i + window] for i in range(0, len(todo), window)]
    interrupted = False
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            loading = [pool.submit(_load, j, max_side, stylizer.stride) for j in windows[0]] if windows else []
            writing = []
            for k in range(len(windows)):
                current = [f.result() for f in loading]
                if k + 1 < len(windows):   # decode the next window while this one runs
                    loading = [pool.submit(_load, j, max_side, stylizer.stride) for j in windows[k + 1]]
                loaded = []
                for job, image, reason in current:
                    if reason is not None:
                        run.fail(job.source, reason)
                    else:
                        loaded.append((job, image))
                if loaded:
                    for job, out in _stylize_window(stylizer, loaded, code, options, run):
                        writing.append(pool.submit(_save, job, out, quality))
                writing = _drain(writing, run, wait=False)
            _drain(writing, run, wait=True)
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    stylizer.close()
    click.echo(run.summary() + (" (interrupted)" if interrupted else ""), err=True)
    if interrupted:
        sys.exit(130)
    sys.exit(1 if run.failed else 0)


def _drain(futures, run, wait: bool):
    """Report finished writes; with ``wait`` all of them. Returns those still running."""
    pending = []
    for f in futures:
        if wait or f.done():
            job, reason = f.result()
            if reason is None:
                run.ok()
            else:
                run.fail(job.source, reason)
        else:
            pending.append(f)
    return pending
