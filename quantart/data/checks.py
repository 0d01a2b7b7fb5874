"""Fault handling: a cheap up-front scan, and counting failures at load time.

``scan_images`` opens every file's header with Pillow and runs ``verify()`` (which
checks CRCs of PNGs and the structure of most formats) without decoding pixels, so
zero-byte files, text files named ``.jpg`` and damaged headers are dropped before
training. Truncated JPEG data is only found when pixels are decoded; the datasets then
substitute another sample and count the failure in a ``FailureLog``.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from quantart_runtime.util import one_line

from .errors import DataError, DataWarning

_SHOWN_PATHS = 3


def _first(paths: Sequence[object]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN_PATHS])
    return shown + (", ..." if len(paths) > _SHOWN_PATHS else "")


def verify_image(path: str | os.PathLike) -> str | None:
    """None if Pillow can identify and verify ``path``; else a short reason."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # decompression-bomb, palette warnings
            with Image.open(path) as image:
                image.verify()
    except Exception as exc:  # any decoder error means the file is unusable
        return one_line(exc, with_type=True)
    return None


@dataclass
class ScanResult:
    """Outcome of ``scan_images``: usable paths and (path, reason) of dropped ones."""

    good: list[Path] = field(default_factory=list)
    bad: list[tuple[Path, str]] = field(default_factory=list)


def scan_images(
    paths: Sequence[Path], *, where: str = "", threads: int | None = None
) -> ScanResult:
    """Verify ``paths`` (order kept), warn once about unreadable ones.

    Raises:
        DataError: no file of ``paths`` is readable (message names ``where``).
    """
    if threads is None:
        threads = min(8, (os.cpu_count() or 1) * 2)
    if len(paths) >= 64 and threads > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            reasons = list(pool.map(verify_image, paths, chunksize=32))
    else:
        reasons = [verify_image(p) for p in paths]
    result = ScanResult()
    for path, reason in zip(paths, reasons):
        if reason is None:
            result.good.append(Path(path))
        else:
            result.bad.append((Path(path), reason))
    label = f" in {where}" if where else ""
    if not result.good:
        first_path, first_reason = result.bad[0]
        raise DataError(
            f"no readable images{label}: all {len(paths)} failed to open "
            f"(first: {first_path}: {first_reason})"
        )
    if result.bad:
        warnings.warn(
            f"skipped {len(result.bad)} unreadable image files{label} "
            f"(first: {_first([p for p, _ in result.bad])})",
            DataWarning,
            stacklevel=2,
        )
    return result


class FailureLog:
    """Records images of one pool that failed to load in ``__getitem__``.

    A shared-memory mask (one flag per path) holds which files failed, so the main
    process and every DataLoader worker agree on ``count`` (distinct files) and no
    worker retries a file another worker found broken. Each process emits a
    ``DataWarning`` with the count and the first paths at its 1st, 2nd, 4th, 8th, ...
    failure.
    """

    def __init__(self, paths: Sequence[Path], where: str = "") -> None:
        self.where = where
        self._paths = list(paths)
        self._mask = torch.zeros(len(self._paths), dtype=torch.uint8).share_memory_()
        self._local = 0

    @property
    def count(self) -> int:
        """Distinct files that failed to load, over the main process and all workers."""
        return int(self._mask.sum())

    @property
    def paths(self) -> list[Path]:
        """The files that failed so far (all processes), in dataset order."""
        return [self._paths[i] for i in torch.nonzero(self._mask).flatten().tolist()]

    def is_bad(self, index: int) -> bool:
        """Whether the file at dataset index ``index`` has failed to load (in any process)."""
        return bool(self._mask[index])

    def record(self, index: int, error: BaseException) -> None:
        """Mark index ``index`` as failed because of ``error``; warns (``DataWarning``) on the 1st, 2nd,
        4th, 8th, ... failure of this process, naming the first and latest files and the reason.
        """
        self._mask[index] = 1
        self._local += 1
        if self._local & (self._local - 1) == 0:  # 1, 2, 4, 8, ...
            label = f" in {self.where}" if self.where else ""
            reason = one_line(error, with_type=True)
            warnings.warn(
                f"{self.count} images failed to load{label} and were replaced by other "
                f"samples (first: {_first(self.paths)}; latest: {self._paths[index]}: {reason})",
                DataWarning,
                stacklevel=3,
            )
