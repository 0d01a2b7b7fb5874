"""The one stylize core: ``quantart stylize``, the Ray Data job and the Ray Serve deployment all run
load -> fit -> batch -> stylize -> write (or return) -> report each failure through it.

- **Error policy**: every per-item failure, of any exception type, is reported for that item (a
  one-line reason) and the other items go on; only ``KeyboardInterrupt`` / ``SystemExit`` stop a run.
  A batch that fails is retried image by image so one bad input cannot take the others down.
- **Size policy** (:meth:`StylizeCore.prepare`): "stream to fit". The minimum-size check runs on the
  ORIGINAL size; the longer side is capped by ``max_side`` only when the caller asks for it (downscaled,
  aspect kept, or refused with ``ImageTooLarge`` when ``resize=False``). A content whose untiled request
  exceeds the model's memory budget (``quantart_runtime.memory``) runs at full size through the exact
  streaming executor (``quantart_runtime.streaming``); one whose streaming plan cannot fit the budget or
  the temporary disk is downscaled to the untiled limit when resizing is allowed, else refused in one
  line before any work. Exports without a streaming schedule keep
  the old rule (downscaled to the budget, the profile's ``max_res`` as the default ``max_side``).
- **Extensions**: inputs are ``INPUT_EXTENSIONS``; the output format option is named ``ext``
  (``--ext``) everywhere, one of ``OUTPUT_FORMATS``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import images as im
from .errors import ImageError, ImageTooLarge
from .inputs import IMAGE_EXTENSIONS, OUTPUT_EXTENSIONS
from .util.errors import one_line

INPUT_EXTENSIONS = frozenset(IMAGE_EXTENSIONS)
OUTPUT_FORMATS = ("same", *OUTPUT_EXTENSIONS)


class DeadlineExceeded(TimeoutError):
    """A streamed image stopped because the time its requests allowed had passed."""


def deadline_progress(deadline: float, then: Callable | None = None) -> Callable:
    """A streaming progress callback that raises ``DeadlineExceeded`` once ``time.monotonic()`` passes
    ``deadline`` (checked at every tile), else calls ``then(done, total)``."""
    import time

    def progress(done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"stopped after {done} of {total} tiles: the request's time limit passed")
        if then is not None:
            then(done, total)
    return progress


def failure_reason(exc: BaseException) -> str:
    """The one-line reason reported for an item that failed with ``exc`` (any exception type)."""
    if isinstance(exc, ImageError):
        return one_line(exc)
    if isinstance(exc, MemoryError):
        return "out of memory for this image (lower --memory-budget or --max-side)"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or one_line(exc)}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or one_line(exc, with_type=True)}"
    return f"stylization failed: {one_line(exc, with_type=True)}"


def check_writable(directory) -> None:
    """Create ``directory`` (and parents) and prove a file can be written there, before any work.
    Raises ``OSError`` with the reason (read-only, permission denied, not a directory, ...)."""
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".quantart-write-test.", suffix=".tmp")
    except OSError as exc:   # name the directory, not the probe file
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    os.close(fd)
    os.unlink(probe)


@dataclass
class Prepared:
    """A content image ready to stylize: ``image`` (H, W, 3) uint8, its ``original`` (H, W) size and
    whether it was downscaled to fit."""
    image: np.ndarray
    original: tuple[int, int]

    @property
    def resized(self) -> bool:
        """True when the image runs smaller than it came."""
        return tuple(self.image.shape[:2]) != tuple(self.original)

    def header(self) -> str:
        """``"WxH->wxh"`` for a resized image (the service's ``X-Quantart-Resized`` header)."""
        (h0, w0), (h, w) = self.original, self.image.shape[:2]
        return f"{w0}x{h0}->{w}x{h}"


@dataclass
class Outcome:
    """What happened to one item: ``result`` (the stylized array, when not written), ``error`` (the
    one-line reason) or neither (written); ``resized_from`` the original (H, W) when downscaled."""
    key: object
    result: np.ndarray | None = None
    error: str | None = None
    resized_from: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        """True when the item succeeded."""
        return self.error is None


class StylizeCore:
    """A loaded Stylizer with one encoded style and the run's options (see the module docstring).

    Args: stylizer: a ``Stylizer``; style: a ``StyleCode`` (or an image the stylizer encodes at
    ``style_size``); content_ratio / output_ratio / batch_size: as ``Stylizer.stylize``;
    max_side: longest content side allowed (``None`` or 0: no cap, the image streams when it is large;
    for exports without a streaming schedule ``None`` is the profile's ``max_res``); resize: downscale
    what is above ``max_side`` (``False``: refuse it with ``ImageTooLarge``); memory_budget: bytes,
    ``"6G"`` or a fraction (``None``: the stylizer's default); streaming: "auto", "always" or "never"
    (``Stylizer.stylize``); progress: ``(tiles done, total)`` callback of streamed images.
    """

    def __init__(self, stylizer, style=None, *, content_ratio: float = 1.0, output_ratio: float = 1.0,
                 batch_size: int | None = None, max_side: int | None = None, resize: bool = True,
                 style_size: int | None = 256, memory_budget=None, streaming: str = "auto", progress=None):
        self.stylizer = stylizer
        if memory_budget is not None:
            stylizer.set_memory_budget(memory_budget)
        self.style_size = style_size
        self.code = None if style is None else self.encode_style(style)
        self.content_ratio = float(content_ratio)
        self.output_ratio = float(output_ratio)
        self.batch_size = batch_size
        from .stream_dispatch import can_stream, check_mode

        self.streaming, self.progress = check_mode(streaming), progress
        self.streams = can_stream(stylizer) and streaming != "never"
        default = None if self.streams else stylizer.max_res
        self.max_side = (default if max_side is None else int(max_side)) or None
        self.resize = bool(resize)

    # -- styles ------------------------------------------------------------------------------
    def encode_style(self, style, size: int | None | str = "default"):
        """Encode a style (array, path or bytes) with the size policy: the minimum size is checked
        on the original image (``ImageError``), the long side and the memory are capped."""
        if not isinstance(style, np.ndarray) and not hasattr(style, "latent"):
            style = im.load_image(style)
        if isinstance(style, np.ndarray):
            im.check_min_size(style.shape[0], style.shape[1], self.stylizer.stride)
            return self.stylizer.encode_style(style, size=self.style_size if size == "default" else size)
        return style

    def style_tokens(self, code=None) -> int:
        """Latent tokens of a style code (the cross-attention keys)."""
        code = code if code is not None else self.code
        return int(np.prod(code.latent.shape[2:])) if code is not None else None

    # -- size policy -------------------------------------------------------------------------
    def limits(self, code=None) -> dict:
        """The limits in force: ``max_side`` (square, px) and ``budget_bytes``."""
        policy = self.stylizer.size_policy
        side = policy.max_side(1, self.style_tokens(code))
        return {"max_side": min(side, self.max_side) if self.max_side else side, "budget_bytes": policy.budget}

    def prepare(self, source, code=None, resize: bool | None = None) -> Prepared:
        """load -> minimum size (original) -> fit to ``max_side`` and the memory budget.

        ``source``: path, encoded bytes or an (H, W, 3) uint8 array; ``code``: the style it will run
        with (default: the core's); ``resize``: overrides the core's ``resize`` for this item.
        Raises ``ImageError`` (unusable or too small), ``ImageTooLarge`` (above a limit when resizing
        is not allowed).
        """
        resize = self.resize if resize is None else bool(resize)
        image = im.check_image_array(source, "content image") if isinstance(source, np.ndarray) \
            else im.load_image(source)
        h, w = image.shape[:2]
        stride = self.stylizer.stride
        im.check_min_size(h, w, stride)
        th, tw = h, w
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            th, tw = max(1, round(h * scale)), max(1, round(w * scale))
        streamed = False
        if self.streams:
            try:
                self._check_streaming(th, tw, code)
                streamed = True
            except ImageTooLarge as exc:   # not even streamed: downscale when allowed, else refuse
                if not resize:
                    raise ImageTooLarge(f"image is {w}x{h}, above this model's limit ({one_line(exc)}); "
                                        f"resizing was not allowed") from None
        if not streamed:
            th, tw = self.stylizer.size_policy.fit(th, tw, self.style_tokens(code))
        if (th, tw) != (h, w):
            if not resize:
                limit = self.limits(code)
                raise ImageTooLarge(f"image is {w}x{h}, above this model's limit (largest side "
                                    f"{limit['max_side']} px within a memory budget of "
                                    f"{limit['budget_bytes'] / 2**30:.2f} GiB); resizing was not allowed")
            th, tw = max(stride, th), max(stride, tw)   # the short side stays one latent cell at least
            image = im.resize(image, th, tw)
        return Prepared(image, (h, w))

    def _check_streaming(self, h: int, w: int, code) -> None:
        """Refuse (``ImageTooLarge``, one line) a content whose streaming plan cannot fit."""
        from . import stream_dispatch as dispatch

        code = code if code is not None else self.code
        tokens = self.style_tokens(code) or self.stylizer.size_policy.style_tokens
        if code is None or not dispatch.content_streams(self.stylizer, h, w, tokens, self.streaming):
            return
        dispatch.plan_content(self.stylizer, h, w, code)

    # -- stylization -------------------------------------------------------------------------
    def stylize_many(self, images: list[np.ndarray], code=None, content_ratio=None,
                     output_ratio=None, deadline: float | None = None) -> list:
        """Stylize prepared images together; returns, in order, each result array or the exception
        that image raised (a failing batch is retried image by image). ``deadline`` (``time.monotonic``):
        a streamed image still running then stops at its next tile with ``DeadlineExceeded`` (its
        temporary files removed), so no work outlives the requests waiting for it."""
        code = code if code is not None else self.code
        progress = self.progress if deadline is None else deadline_progress(deadline, self.progress)
        options = dict(content_ratio=self.content_ratio if content_ratio is None else content_ratio,
                       output_ratio=self.output_ratio if output_ratio is None else output_ratio)
        if not images:
            return []
        try:
            return list(self.stylizer.stylize(list(images), code, batch_size=self.batch_size, **options,
                                              streaming=self.streaming, progress=progress))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - isolate the failing image(s) below
            if len(images) == 1:
                return [exc]
        results: list = []
        for image in images:
            try:
                results.append(self.stylizer.stylize(image, code, **options, streaming=self.streaming,
                                                     progress=progress))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - reported for this image
                results.append(exc)
        return results

    def run(self, items: Iterable[tuple[object, object, object]], write: Callable | None = None,
            window: int = 8) -> list[Outcome]:
        """The whole pipeline, sequentially: ``items`` are ``(key, source, target)``; each source is
        prepared, windows of ``window`` are stylized together, and each result is written with
        ``write(array, target)`` (or returned in ``Outcome.result`` when ``write`` is None).
        Every failure becomes that item's ``Outcome.error``; the others go on."""
        outcomes: list[Outcome] = []
        pending: list[tuple[object, object, Prepared]] = []

        def flush():
            results = self.stylize_many([p.image for _, _, p in pending])
            for (key, target, prep), result in zip(pending, results):
                outcomes.append(self._finish(key, target, prep, result, write))
            pending.clear()

        for key, source, target in items:
            try:
                pending.append((key, target, self.prepare(source)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - the error policy
                outcomes.append(Outcome(key, error=failure_reason(exc)))
            if len(pending) >= window:
                flush()
        if pending:
            flush()
        return outcomes

    @staticmethod
    def _finish(key, target, prep: Prepared, result, write) -> Outcome:
        resized = prep.original if prep.resized else None
        if isinstance(result, BaseException):
            return Outcome(key, error=failure_reason(result), resized_from=resized)
        if write is None:
            return Outcome(key, result=result, resized_from=resized)
        try:
            write(result, target)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - the error policy
            return Outcome(key, error=f"cannot write {target}: {failure_reason(exc)}", resized_from=resized)
        return Outcome(key, resized_from=resized)
