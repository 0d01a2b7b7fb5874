"""Which files a batch run reads and writes: CONTENT arguments -> (source, output) jobs.

CONTENT arguments may be files, directories (images found inside, recursively by default; hidden
files skipped) or glob patterns. A directory's images keep their relative path under the output
directory; files and glob matches are written by name. Outputs that would collide get ``-2``, ``-3``
suffixes in input order (deterministic, so ``--skip-existing`` resumes correctly).

Nothing found is dropped silently: a dangling or looping symbolic link and a sub-folder that cannot
be listed become a ``(path, reason)`` problem, reported and counted like a failed image.
"""
from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
OUTPUT_EXTENSIONS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpeg", "webp": ".webp"}


def path_key(path: Path) -> Path:
    """A comparable identity for ``path``: its resolved form, or (a symlink loop, an unreadable
    parent) its absolute form; never raises."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def broken_link(path: Path) -> str | None:
    """The reason a symbolic link cannot be followed (dangling / loop), else ``None``."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link ({exc.strerror or exc})"
    return None


@dataclass
class Job:
    """One content image: where it is read, where it goes under the output directory, and (after
    ``plan_outputs``) its output file."""
    source: Path
    relative: Path          # where it goes under the output directory (before the extension change)
    output: Path | None = None


def _images_in(directory: Path, recursive: bool, problems: list) -> list[Path]:
    """Image files under ``directory``; unlistable sub-folders and broken links go to ``problems``."""
    found = []

    def unreadable(exc: OSError) -> None:
        if exc.filename and os.path.abspath(exc.filename) != os.path.abspath(directory):
            problems.append((str(exc.filename), f"cannot list directory ({exc.strerror or exc})"))
        else:
            raise exc

    walker = (os.walk(directory, onerror=unreadable) if recursive
              else [(str(directory), [], os.listdir(directory))])
    for root, dirs, names in walker:
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if not recursive:
            names = [n for n in names if not (Path(root) / n).is_dir()]
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            broken = broken_link(path)
            if broken:
                problems.append((str(path), broken))
            elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                found.append(path)
    return found


def collect_inputs(arguments, recursive: bool = True) -> tuple[list[Job], list[tuple[str, str]]]:
    """-> (jobs in argument order, without duplicates; [(argument, reason)] for arguments that
    name nothing)."""
    jobs: list[Job] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, relative: Path) -> None:
        key = path_key(path)
        if key not in seen:
            seen.add(key)
            jobs.append(Job(path, relative))

    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            try:
                for found in _images_in(path, recursive, problems):
                    add(found, found.relative_to(path))
            except OSError as exc:
                problems.append((arg, f"cannot list directory ({exc.strerror or exc})"))
        elif path.is_symlink() and broken_link(path):
            problems.append((arg, broken_link(path)))
        elif path.exists():
            add(path, Path(path.name))
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            broken = [(m, broken_link(Path(m))) for m in matches if broken_link(Path(m))]
            problems.extend(broken)
            if not files and not broken:
                problems.append((arg, "no files match this pattern"))
            for match in files:
                add(match, Path(match.name))
        else:
            problems.append((arg, "no such file or directory"))
    return jobs, problems


def output_suffix(source: Path, ext: str) -> str:
    """``ext`` "same" keeps a PNG/JPEG/WebP input's extension (lower-cased), else PNG."""
    if ext == "same":
        suffix = source.suffix.lower()
        return suffix if suffix in OUTPUT_EXTENSIONS.values() else ".png"
    return OUTPUT_EXTENSIONS[ext]


def plan_outputs(jobs: list[Job], out_dir: Path, ext: str) -> None:
    """Fill ``job.output`` for every job (collisions get -2, -3, ... suffixes)."""
    taken: set[Path] = set()
    for job in jobs:
        suffix = output_suffix(job.source, ext)
        base = out_dir / job.relative.with_suffix(suffix)
        candidate, n = base, 1
        while path_key(candidate) in taken:
            n += 1
            candidate = base.with_name(f"{base.stem}-{n}{suffix}")
        taken.add(path_key(candidate))
        job.output = candidate


def overwritten_input(jobs: list[Job], protected: list[Path]) -> tuple[Path, Path] | None:
    """(output, input) of the first planned output that is one of the inputs (or ``protected``)."""
    inputs = {path_key(job.source): job.source for job in jobs}
    inputs.update({path_key(p): p for p in protected})
    for job in jobs:
        hit = inputs.get(path_key(job.output))
        if hit is not None:
            return job.output, hit
    return None
