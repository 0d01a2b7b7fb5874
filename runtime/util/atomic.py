"""Atomic writes: a reader sees the old file (or directory) or the whole new one, never a half.

Files: a temp file in the same directory, then ``os.replace``. Directories: a temp directory beside
the target, filled by the caller, then swapped in (an existing target is moved aside first and
removed after the swap). Outputs get ordinary umask permissions, not mkstemp's private 0600/0700.
This module is the only place in the project that calls ``os.replace``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path, fsync: bool = False):
    """Open a binary temp file beside ``path``; on a clean exit it replaces ``path``, else it is removed.

    Args: path: the final file; fsync: flush to disk before the rename (checkpoints).
    Yields: the open binary file object. Raises: ``OSError`` from the file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_open(path, fsync=fsync) as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str, fsync: bool = False) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``Path(path)``."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (with a trailing newline) to ``path`` atomically; returns ``Path(path)``."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def replace(src, dst) -> None:
    """``os.replace(src, dst)``: the rename step for callers that produce the temp file themselves
    (e.g. a library that insists on writing to a path); ``src`` must be on the same file system."""
    os.replace(src, dst)


@contextlib.contextmanager
def atomic_dir(path, prefix: str | None = None):
    """Build a directory atomically: yields an empty temp directory beside ``path``; on a clean exit
    it becomes ``path`` (an existing ``path`` is replaced as a whole), else it is removed.

    Stale temp directories of an earlier killed run are named ``.{name}.*.tmp`` beside ``path``;
    :func:`clean_stale` removes them. Raises ``OSError`` from the file system.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "replaced")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale(path, older_than_s: float = 0.0) -> list[Path]:
    """Remove temp/old directories and files that :func:`atomic_dir` / :func:`atomic_open` left
    beside ``path`` when a run was killed (``.{name}.*.tmp`` / ``.{name}.*.old``) and that are older
    than ``older_than_s`` seconds. Returns what was removed."""
    import time

    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for pattern in (f".{path.name}.*.tmp", f".{path.name}.*.old"):
        for stale in path.parent.glob(pattern):
            try:
                if now - stale.lstat().st_mtime < older_than_s:
                    continue
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink()
                removed.append(stale)
            except OSError:
                continue
    return removed
