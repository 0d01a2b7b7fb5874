"""`quantart stylize`: stylize files, directories or globs with an exported model (no torch).

The work itself is ``quantart_runtime.core`` (shared with the Ray Data job and the service); this
module adds the file pipeline (decode the next window while one runs, write in the background), the
progress bar and the exit codes: 0 all done (or skipped); 1 some files failed (each reported with its
name and reason, the others still written); 2 the model directory, backend, style image, output
directory or arguments are unusable (one line on stderr, nothing processed); 130 interrupted (the
summary counts the files written before the interruption).
"""
from __future__ import annotations

import logging
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from .core import OUTPUT_FORMATS, StylizeCore, check_writable, failure_reason
from .errors import ImageError, ModelError
from .images import save_image
from .inputs import collect_inputs, overwritten_input, plan_outputs
from .util.errors import one_line


def _fail_setup(message: str):
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(2)


class _Run:
    """Counts and reports outcomes without garbling the progress bar."""

    def __init__(self, bar):
        self.bar = bar
        self.done = self.failed = self.skipped = 0

    def fail(self, name, reason: str) -> None:
        """Count and report one failed item."""
        self.failed += 1
        self.bar.write(f"failed: {name}: {reason}", file=sys.stderr)
        self.bar.update(1)

    def ok(self) -> None:
        """Count one written output."""
        self.done += 1
        self.bar.update(1)

    def skip(self) -> None:
        """Count one skipped item (its output exists)."""
        self.skipped += 1
        self.bar.update(1)

    def summary(self) -> str:
        """The summary line."""
        return f"done {self.done}, failed {self.failed}, skipped {self.skipped}"


def _prepare(core, job):
    """-> (job, Prepared or None, reason or None); runs in a worker thread."""
    try:
        return job, core.prepare(job.source), None
    except Exception as exc:  # noqa: BLE001 - the error policy: reported for this file
        return job, None, failure_reason(exc)


def _save(job, image, quality):
    """-> (job, reason or None); runs in a worker thread."""
    try:
        save_image(image, job.output, quality=quality)
        return job, None
    except Exception as exc:  # noqa: BLE001 - the error policy
        return job, f"cannot write {job.output}: {failure_reason(exc)}"


def _drain(futures, run, wait: bool):
    """Report finished writes; with ``wait`` all of them. Returns those still running."""
    pending = []
    for f in futures:
        if wait or f.done():
            if f.cancelled():
                continue
            job, reason = f.result()
            if reason is None:
                run.ok()
            else:
                run.fail(job.source, reason)
        else:
            pending.append(f)
    return pending


def _quiet_libraries() -> None:
    """Errors are one line on stderr: library warnings and log chatter are silenced here."""
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass


class _TileBar:
    """Tiles done / total of a content that streams: a second progress bar, shown while it runs."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.bar = enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or self.bar.total != total or done < self.bar.n:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, unit="tile", desc="streaming", position=1, leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.bar.close()
            self.bar = None


@click.command("stylize")
@click.option("--model", "-m", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model directory written by quantart-export.")
@click.option("--style", "-s", "style_path", required=True, type=click.Path(path_type=Path),
              help="Style image.")
@click.argument("contents", nargs=-1, required=True)
@click.option("--out-dir", "-o", type=click.Path(path_type=Path), default=Path("stylized"), show_default=True,
              help="Output directory (a directory input keeps its sub-folders). Must not overwrite an input.")
@click.option("--ext", type=click.Choice(OUTPUT_FORMATS), default="same", show_default=True,
              help="Output format; 'same' keeps a PNG/JPEG/WebP input's extension, else PNG.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG/WebP quality.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt", "openvino", "cpu"]), default="auto",
              show_default=True, help="auto: TensorRT, else ONNX Runtime CUDA, else OpenVINO with the model's "
                                      "verified precision plan on this CPU, else ONNX Runtime CPU FP32; "
                                      "cpu: ONNX Runtime on the CPU.")
@click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="GPU index.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]), default="auto",
              show_default=True, help="auto: fp32, or the verified per-graph plan on OpenVINO; bf16 and int8 run "
                                      "on OpenVINO (int8: the model's export-verified INT8 graphs, the rest fp32).")
@click.option("--verbose", "-v", is_flag=True, help="Say which backend and precision were chosen and why.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per graph call (images of equal padded size are batched; never more than the "
                   "memory budget holds). Default: by image size.")
@click.option("--content-ratio", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Discrete-continuous fusion of the SGA input (1 = fully quantized).")
@click.option("--output-ratio", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True,
              help="Discrete-continuous fusion of the SGA output (1 = fully quantized).")
@click.option("--max-side", type=click.IntRange(min=0), default=None,
              help="Downscale contents whose longer side exceeds N pixels (aspect kept; the output has the "
                   "downscaled size). Default: no cap: contents above the memory budget stream at full "
                   "size, exactly (older exports: downscaled to the budget). 0: never resize.")
@click.option("--memory-budget", default=None, metavar="BYTES|FRACTION",
              help="Peak working memory a request may use: bytes (6G, 512M) or a fraction of the available "
                   "memory (0.3). Default: $QUANTART_MEMORY_BUDGET, else half the available memory.")
@click.option("--style-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="The style image's shorter side is resized to this before encoding (its longer side "
                   "to at most 4 times this).")
@click.option("--skip-existing", is_flag=True, help="Skip contents whose output file already exists.")
@click.option("--recursive/--no-recursive", default=True, show_default=True,
              help="Search directories recursively.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def stylize(model_dir, style_path, contents, out_dir, ext, quality, backend, device, precision, batch_size,
            content_ratio, output_ratio, max_side, memory_budget, style_size, skip_existing, recursive, progress,
            verbose):
    """Stylize CONTENT images (files, directories or globs) with an exported model.

    Transparent images are composited on white. Exit code 1 if any file failed, 2 if the model,
    style image or output directory is unusable, 130 if interrupted.
    """
    from tqdm import tqdm

    from .memory import parse_budget
    from .stylizer import Stylizer

    _quiet_libraries()
    if memory_budget is not None:
        try:
            parse_budget(memory_budget)
        except ValueError as exc:
            _fail_setup(str(exc))
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
        check_writable(out_dir)
    except OSError as exc:
        _fail_setup(f"cannot write to output directory {out_dir}: {exc.strerror or one_line(exc)}")

    precision = None if precision == "auto" else precision
    try:
        if backend == "cpu":
            stylizer = Stylizer.load(model_dir, backend="onnxruntime", device=device,
                                     providers=["CPUExecutionProvider"], precision=precision)
        else:
            stylizer = Stylizer.load(model_dir, backend=backend, device=device, precision=precision)
    except ModelError as exc:
        _fail_setup(str(exc))
    if verbose:
        click.echo(f"backend: {stylizer.backend}, precision: {stylizer.precision}"
                   + (f" ({stylizer.reason})" if stylizer.reason else ""), err=True)
    try:
        core = StylizeCore(stylizer, None, content_ratio=content_ratio, output_ratio=output_ratio,
                           batch_size=batch_size, max_side=max_side, resize=max_side != 0,
                           style_size=style_size, memory_budget=memory_budget,
                           progress=_TileBar(enabled=progress))
        core.code = core.encode_style(style_path)
    except ImageError as exc:
        _fail_setup(f"style image {style_path}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a style that cannot be encoded: one line, exit 2
        _fail_setup(f"style image {style_path}: {failure_reason(exc)}")

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
    writing: list = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            loading = [pool.submit(_prepare, core, j) for j in windows[0]] if windows else []
            for k in range(len(windows)):
                current = [f.result() for f in loading]
                if k + 1 < len(windows):   # decode the next window while this one runs
                    loading = [pool.submit(_prepare, core, j) for j in windows[k + 1]]
                ready = []
                for job, prepared, reason in current:
                    if reason is not None:
                        run.fail(job.source, reason)
                    else:
                        ready.append((job, prepared))
                results = core.stylize_many([p.image for _, p in ready])
                for (job, _), result in zip(ready, results):
                    if isinstance(result, BaseException):
                        run.fail(job.source, failure_reason(result))
                    else:
                        writing.append(pool.submit(_save, job, result, quality))
                writing = _drain(writing, run, wait=False)
            writing = _drain(writing, run, wait=True)
        except KeyboardInterrupt:
            interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)
            try:  # count what was written before the interruption
                writing = _drain([f for f in writing if f.done() and not f.cancelled()], run, wait=True)
            except BaseException:  # noqa: BLE001 - a second Ctrl-C: report what we have
                pass
    bar.close()
    stylizer.close()
    click.echo(run.summary() + (" (interrupted)" if interrupted else ""), err=True)
    if interrupted:
        sys.exit(130)
    sys.exit(1 if run.failed else 0)
