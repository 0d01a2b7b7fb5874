"""Map-style datasets for both QuantArt stages.

Sample dictionaries (tensors are float32, shape (3, size, size), values in [-1, 1]):

* ``ImageFolderDataset`` (Stage 1): ``{"image": Tensor, "path": str}``
* ``UnpairedDataset`` (Stage 2): ``{"content": Tensor, "style": Tensor,
  "content_path": str, "style_path": str}``
* ``PairedDataset`` (Stage 2, aligned pairs): same keys as ``UnpairedDataset``.

(The official code returns ``image`` for Stage 1 and ``image1``/``image2`` for Stage 2;
here ``content`` is the official ``image1`` and ``style`` the official ``image2``.)

Randomness (random crops, the content x style pairing) is a pure function of
``(seed, epoch, index)``: results do not depend on the number of DataLoader workers or
on which worker loads a sample. Call ``set_epoch(epoch)`` before iterating each epoch;
the epoch lives in shared memory, so persistent workers see it too.

Faults: unreadable files are dropped by an up-front scan (``check=True``); a file that
still fails when decoded (e.g. truncated JPEG data) is replaced by the next loadable one
of its folder, recorded in ``failures`` (count over all workers) and reported with a
``DataWarning``. A missing/empty folder, one without images, or one without a single
readable image raises ``DataError`` in the constructor.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .checks import FailureLog, scan_images
from .errors import DataError
from .folders import collect_images
from .images import load_tensor

PathLike = str | os.PathLike


def _rng(seed: int, epoch: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, stream])


class ImagePool:
    """The verified image files of one source and the loader that survives bad ones."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        where: str,
        check: bool = True,
    ) -> None:
        self.where = where
        self.skipped: list[Path] = []
        if check:
            scan = scan_images(list(paths), where=where)
            paths = scan.good
            self.skipped = [p for p, _ in scan.bad]
        self.paths: list[Path] = list(paths)
        self.failures = FailureLog(self.paths, where=where)
        self.min_scale = 1.0  # training augmentation (set by the dataset): see images.augment_crop
        self.flip = False

    def __len__(self) -> int:
        return len(self.paths)

    def try_load(
        self, index: int, size: int | None, rng: np.random.Generator | None
    ) -> torch.Tensor | None:
        """The tensor of ``paths[index]``, or None (failure recorded) if it cannot be read."""
        if self.failures.is_bad(index):
            return None
        try:
            return load_tensor(self.paths[index], size, rng, self.min_scale, self.flip)
        except Exception as exc:  # unreadable/truncated: the caller substitutes
            self.failures.record(index, exc)
            return None

    def load(
        self, index: int, size: int | None, rng_for: Callable[[], np.random.Generator | None]
    ) -> tuple[torch.Tensor, Path]:
        """Load ``paths[index]``, or the next loadable path after it (wrapping around)."""
        n = len(self.paths)
        for step in range(n):
            j = (index + step) % n
            image = self.try_load(j, size, rng_for())
            if image is not None:
                return image, self.paths[j]
        raise DataError(f"no image could be loaded from {self.where}")


class _EpochDataset(Dataset):
    """Common parts: seed, shared epoch, crop mode, length limit."""

    def __init__(self, size: int | None, random_crop: bool, seed: int, max_items: int | None,
                 min_scale: float = 1.0, flip: bool = False):
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise DataError(f"size must be a positive integer or None, got {size!r}")
        if not 0.0 < float(min_scale) <= 1.0:
            raise DataError(f"min_scale must be in (0, 1], got {min_scale!r}")
        self.min_scale, self.flip = float(min_scale), bool(flip)
        if max_items is not None and max_items <= 0:
            raise DataError(f"max_items must be positive, got {max_items!r}")
        self.size = size
        self.random_crop = bool(random_crop)
        self.seed = int(seed)
        self.max_items = max_items
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.pools: list[ImagePool] = []

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops/pairings ``__getitem__`` returns (all workers)."""
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch[0] = int(epoch)

    def _augment(self, *pools: ImagePool) -> None:
        """Give ``pools`` this dataset's augmentation (used with random crops only)."""
        for pool in pools:
            pool.min_scale, pool.flip = self.min_scale, self.flip

    def _limit(self, n: int) -> int:
        return n if self.max_items is None else min(n, self.max_items)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for dataset of length {n}")
        return index

    def _crop_rng(self, epoch: int, index: int, stream: int):
        if not self.random_crop:
            return lambda: None
        return lambda: _rng(self.seed, epoch, index, stream)

    @property
    def failures(self) -> int:
        """Files that failed to load in ``__getitem__`` so far (all workers)."""
        return sum(pool.failures.count for pool in self.pools)

    @property
    def failed_paths(self) -> list[Path]:
        """Files that failed to load in ``__getitem__`` so far (all workers)."""
        return [p for pool in self.pools for p in pool.failures.paths]

    @property
    def skipped(self) -> list[Path]:
        """Files dropped by the up-front scan."""
        return [p for pool in self.pools for p in pool.skipped]


class ImageFolderDataset(_EpochDataset):
    """Stage 1: every image of ``root`` (recursive), or of a list file / CSV selection.

    Args:
        root: image folder (searched recursively); with ``csv_file``/``list_file`` the
            folder their relative names refer to.
        size: output side; the shorter side is resized to it, then cropped square.
            ``None`` keeps original sizes (use batch size 1).
        random_crop: random crop (training) if True, centre crop (validation) if False.
        list_file: text file of image paths (official ``training_images_list_file``).
        csv_file, genre: WikiArt-style CSV filter (official ``wikiart_info``/``wikiart_key``).
        seed: seed of the random crops. check: scan files up front.
        max_items: cap on the length (the official validation sets use 1000).
        min_scale, flip: with random crops, multi-scale crops (side from ``min_scale`` x the
            shorter side to all of it, resized to ``size``) and random left-right flips
            (``images.augment_crop``); the defaults (1.0, False) keep the plain random crop.
    """

    def __init__(
        self,
        root: PathLike | None = None,
        size: int | None = 256,
        *,
        random_crop: bool = True,
        list_file: PathLike | None = None,
        csv_file: PathLike | None = None,
        genre: str | Sequence[str] | None = None,
        seed: int = 0,
        check: bool = True,
        max_items: int | None = None,
        min_scale: float = 1.0,
        flip: bool = False,
    ) -> None:
        super().__init__(size, random_crop, seed, max_items, min_scale, flip)
        where = str(root if root is not None else list_file)
        paths = collect_images(root, list_file=list_file, csv_file=csv_file, genre=genre)
        self.pool = ImagePool(paths, where=where, check=check)
        self.pools = [self.pool]
        self._augment(self.pool)

    @property
    def paths(self) -> list[Path]:
        """The usable image files, in dataset order."""
        return self.pool.paths

    def __len__(self) -> int:
        return self._limit(len(self.pool))

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        image, path = self.pool.load(index, self.size, self._crop_rng(self.epoch, index, 0))
        return {"image": image, "path": str(path)}

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({self.pool.where!r}, images={len(self.pool)}, "
                f"size={self.size}, random_crop={self.random_crop})")


class UnpairedDataset(_EpochDataset):
    """Stage 2: content images x style images, re-paired every epoch.

    One epoch visits every content image once (``len == number of content images``);
    its style partner comes from a per-epoch shuffled cycle through all style images,
    so every style is used about equally and the pairing changes from epoch to epoch.
    The pairing depends only on ``(seed, epoch)``.

    ``content_csv``/``content_genre`` and ``style_csv``/``style_genre`` select images
    with a WikiArt-style CSV (official ``wikiart_info1/2``, ``wikiart_key1/2``).
    """

    def __init__(
        self,
        content_root: PathLike,
        style_root: PathLike,
        size: int | None = 256,
        *,
        random_crop: bool = True,
        content_csv: PathLike | None = None,
        content_genre: str | Sequence[str] | None = None,
        style_csv: PathLike | None = None,
        style_genre: str | Sequence[str] | None = None,
        seed: int = 0,
        check: bool = True,
        max_items: int | None = None,
        min_scale: float = 1.0,
        flip: bool = False,
    ) -> None:
        super().__init__(size, random_crop, seed, max_items, min_scale, flip)
        content = collect_images(content_root, csv_file=content_csv, genre=content_genre,
                                 what="content")
        style = collect_images(style_root, csv_file=style_csv, genre=style_genre, what="style")
        self.content = ImagePool(content, where=f"content folder {content_root}", check=check)
        self.style = ImagePool(style, where=f"style folder {style_root}", check=check)
        self.pools = [self.content, self.style]
        self._augment(self.content, self.style)
        self._pairing_epoch: int | None = None
        self._pairing: np.ndarray | None = None

    def __len__(self) -> int:
        return self._limit(len(self.content))

    def style_indices(self, epoch: int | None = None) -> np.ndarray:
        """Style index paired with each content index in ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._pairing_epoch != epoch or self._pairing is None:
            n, m = len(self.content), len(self.style)
            rng = _rng(self.seed, epoch, 0, 1)
            cycles = -(-n // m)
            order = np.concatenate([rng.permutation(m) for _ in range(cycles)])[:n]
            self._pairing, self._pairing_epoch = order, epoch
        return self._pairing

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        epoch = self.epoch
        style_index = int(self.style_indices(epoch)[index])
        content, content_path = self.content.load(
            index, self.size, self._crop_rng(epoch, index, 2))
        style, style_path = self.style.load(
            style_index, self.size, self._crop_rng(epoch, index, 3))
        return {"content": content, "style": style,
                "content_path": str(content_path), "style_path": str(style_path)}

    def __repr__(self) -> str:
        return (f"UnpairedDataset(content={len(self.content)}, style={len(self.style)}, "
                f"size={self.size}, random_crop={self.random_crop})")


class PairedDataset(_EpochDataset):
    """Stage 2 with aligned pairs: ``content_root/x.*`` goes with ``style_root/x.*``.

    Files are matched by their path relative to the folder, without extension (so
    ``a/1.jpg`` pairs with ``a/1.png``). Both images of a pair get the same crop box.
    Unmatched files are ignored; no match at all is a ``DataError``.
    """

    def __init__(
        self,
        content_root: PathLike,
        style_root: PathLike,
        size: int | None = 256,
        *,
        random_crop: bool = True,
        seed: int = 0,
        check: bool = True,
        max_items: int | None = None,
    ) -> None:
        super().__init__(size, random_crop, seed, max_items)
        content = self._by_stem(collect_images(content_root, what="content"), content_root)
        style = self._by_stem(collect_images(style_root, what="style"), style_root)
        keys = sorted(content.keys() & style.keys())
        if not keys:
            raise DataError(
                f"no file names in common between content folder {content_root} "
                f"and style folder {style_root}")
        content_pool = ImagePool([content[k] for k in keys],
                                 where=f"content folder {content_root}", check=check)
        style_pool = ImagePool([style[k] for k in keys],
                               where=f"style folder {style_root}", check=check)
        good_content, good_style = set(content_pool.paths), set(style_pool.paths)
        pairs = [(content[k], style[k]) for k in keys
                 if content[k] in good_content and style[k] in good_style]
        if not pairs:
            raise DataError(f"no readable pairs in content folder {content_root} and "
                            f"style folder {style_root}")
        self.content = ImagePool([c for c, _ in pairs], where=content_pool.where, check=False)
        self.style = ImagePool([s for _, s in pairs], where=style_pool.where, check=False)
        self.content.skipped, self.style.skipped = content_pool.skipped, style_pool.skipped
        self.pools = [self.content, self.style]

    @staticmethod
    def _by_stem(paths: list[Path], root: PathLike) -> dict[str, Path]:
        base = Path(root).expanduser().resolve()
        return {p.relative_to(base).with_suffix("").as_posix(): p for p in paths}

    def __len__(self) -> int:
        return self._limit(len(self.content))

    def __getitem__(self, index: int) -> dict:
        index = self._check_index(index)
        epoch = self.epoch
        n = len(self.content)
        for step in range(n):
            j = (index + step) % n
            content = self.content.try_load(j, self.size, self._crop_rng(epoch, index, 4)())
            if content is None:
                continue
            style = self.style.try_load(j, self.size, self._crop_rng(epoch, index, 4)())
            if style is None:
                continue
            return {"content": content, "style": style,
                    "content_path": str(self.content.paths[j]),
                    "style_path": str(self.style.paths[j])}
        raise DataError(f"no pair could be loaded from {self.content.where} and {self.style.where}")

    def __repr__(self) -> str:
        return f"PairedDataset(pairs={len(self.content)}, size={self.size}, random_crop={self.random_crop})"
