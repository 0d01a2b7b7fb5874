"""Finding image files: recursive folder walks, official list files, WikiArt CSV filters.

Every function returns a sorted list of absolute ``Path`` objects, so all DDP ranks and
all DataLoader workers see the same order. Nothing here opens an image (see ``checks``).
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from .errors import DataError, DataWarning

#: File extensions recognised as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_SHOWN_PATHS = 3


def is_image_file(path: str | os.PathLike) -> bool:
    """True if ``path`` has one of ``IMAGE_EXTENSIONS`` (any case)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _first(paths: Sequence[object]) -> str:
    shown = ", ".join(str(p) for p in paths[:_SHOWN_PATHS])
    return shown + (", ..." if len(paths) > _SHOWN_PATHS else "")


def _check_folder(root: str | os.PathLike, what: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.exists():
        raise DataError(f"{what} folder does not exist: {folder}")
    if not folder.is_dir():
        raise DataError(f"{what} folder is not a directory: {folder}")
    return folder.resolve()


def find_images(root: str | os.PathLike, *, what: str = "image") -> list[Path]:
    """All images under ``root``, recursively, following symlinked folders once.

    Hidden files and folders (name starting with ``.``, e.g. macOS ``._x.jpg``
    resource forks or ``.ipynb_checkpoints``) are ignored.

    Raises:
        DataError: the folder is missing, is not a directory, is empty, or holds no
            file with an image extension.
    """
    folder = _check_folder(root, what)
    images: list[Path] = []
    others = 0
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if is_image_file(name):
                images.append(Path(dirpath, name))
            else:
                others += 1
    if not images:
        if others == 0:
            raise DataError(f"{what} folder is empty: {folder}")
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DataError(
            f"{what} folder has no images ({exts}) among its {others} files: {folder}"
        )
    return sorted(images, key=lambda p: p.relative_to(folder).as_posix())


def _existing(candidates: Iterable[Path], source: str, root: Path | None) -> list[Path]:
    present: list[Path] = []
    missing: list[Path] = []
    for path in candidates:
        (present if path.is_file() else missing).append(path)
    if missing:
        where = f" under {root}" if root is not None else ""
        warnings.warn(
            f"{len(missing)} files listed in {source} are missing{where} and are skipped "
            f"(first: {_first(missing)})",
            DataWarning,
            stacklevel=3,
        )
    # Keep list order unique and deterministic.
    unique = sorted(set(present), key=lambda p: p.as_posix())
    return unique


def read_image_list(
    list_file: str | os.PathLike, root: str | os.PathLike | None = None, *, what: str = "image"
) -> list[Path]:
    """Images named in a text file, one path per line (official ``*_images_list_file``).

    Relative lines are resolved against ``root`` when given, else against the current
    directory (as the official code does). Blank lines and ``#`` comments are ignored;
    listed files that do not exist are skipped with a ``DataWarning``.
    """
    listing = Path(list_file).expanduser()
    if not listing.is_file():
        raise DataError(f"{what} list file does not exist: {listing}")
    base = _check_folder(root, what) if root is not None else None
    candidates: list[Path] = []
    with open(listing, encoding="utf-8") as handle:
        for line in handle:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            path = Path(entry).expanduser()
            if not path.is_absolute():
                path = (base / path) if base is not None else Path.cwd() / path
            if is_image_file(path):
                candidates.append(path.resolve())
    if not candidates:
        raise DataError(f"{what} list file names no images: {listing}")
    images = _existing(candidates, str(listing), base)
    if not images:
        raise DataError(f"none of the {len(candidates)} images in {listing} exist")
    return images


def read_csv_filter(
    csv_file: str | os.PathLike,
    root: str | os.PathLike,
    genre: str | Sequence[str] | None = None,
    *,
    what: str = "image",
) -> list[Path]:
    """Images of ``root`` selected by a WikiArt-style CSV (official ``wikiart_info``/``wikiart_key``).

    The CSV has a header with at least a ``filename`` column (path relative to
    ``root``) and, when ``genre`` is given, a ``genre`` column; rows whose genre equals
    ``genre`` (or is one of them, for a sequence) are kept. ``genre=None`` keeps every
    listed file. Listed files missing on disk are skipped with a ``DataWarning``.

    Raises:
        DataError: missing CSV or folder, missing columns, or no row matches.
    """
    table = Path(csv_file).expanduser()
    if not table.is_file():
        raise DataError(f"CSV file does not exist: {table}")
    folder = _check_folder(root, what)
    wanted = None if genre is None else ({genre} if isinstance(genre, str) else set(genre))
    candidates: list[Path] = []
    genres: set[str] = set()
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        needed = {"filename"} | ({"genre"} if wanted is not None else set())
        if not needed <= columns:
            missing = ", ".join(sorted(needed - columns))
            raise DataError(f"CSV file lacks column(s) {missing}: {table}")
        for row in reader:
            name = (row.get("filename") or "").strip()
            if not name:
                continue
            row_genre = (row.get("genre") or "").strip()
            genres.add(row_genre)
            if wanted is not None and row_genre not in wanted:
                continue
            if is_image_file(name):
                candidates.append((folder / name).resolve())
    if not candidates:
        known = ", ".join(sorted(g for g in genres if g)[:8])
        raise DataError(
            f"no image rows of genre {sorted(wanted) if wanted else 'any'} in {table}"
            + (f" (genres include: {known})" if known else "")
        )
    images = _existing(candidates, str(table), folder)
    if not images:
        raise DataError(f"none of the {len(candidates)} images selected by {table} exist in {folder}")
    return images


def collect_images(
    root: str | os.PathLike | None = None,
    *,
    list_file: str | os.PathLike | None = None,
    csv_file: str | os.PathLike | None = None,
    genre: str | Sequence[str] | None = None,
    what: str = "image",
) -> list[Path]:
    """One entry point for the three ways of naming images.

    ``csv_file`` (with ``root``) > ``list_file`` > recursive walk of ``root``.
    """
    if csv_file is not None:
        if root is None:
            raise DataError(f"a CSV filter needs the {what} folder its filenames are relative to")
        return read_csv_filter(csv_file, root, genre, what=what)
    if genre is not None:
        raise DataError(f"genre={genre!r} given without a CSV file for the {what} folder")
    if list_file is not None:
        return read_image_list(list_file, root, what=what)
    if root is None:
        raise DataError(f"no {what} folder given")
    return find_images(root, what=what)
