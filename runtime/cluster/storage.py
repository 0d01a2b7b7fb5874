"""Where the batch job's images come from and go to: local folders or any filesystem URI that
pyarrow (and so Ray Data) reads, e.g. ``s3://bucket/photos``.

Local outputs are written atomically (temp file in the same directory + ``os.replace``, through
``quantart_runtime.images.save_image``); object stores publish an object only when its upload
completes, which gives the same guarantee. An output counts as *complete* when it ends with its
format's end marker (PNG ``IEND`` chunk, JPEG ``EOI``), so a half-written file from a tool without
atomic writes is redone rather than skipped.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
from pathlib import Path

import numpy as np

from ..core import INPUT_EXTENSIONS, OUTPUT_FORMATS  # the same inputs and formats as `quantart stylize`
from ..images import save_image
from ..inputs import broken_link, output_suffix
from ..util.atomic import write_bytes

__all__ = ["OUTPUT_FORMATS", "list_inputs", "output_name", "existing_outputs", "is_complete", "read_bytes",
           "write_bytes_atomic", "write_image", "write_failures", "join", "is_uri"]
_END_MARKERS = {".png": b"IEND\xaeB`\x82", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


def is_uri(path) -> bool:
    """True for a URI (``scheme://...``), False for a local path."""
    return "://" in str(path)


def _filesystem(uri: str):
    import pyarrow.fs  # a dependency of ray[data]; only needed for URIs

    return pyarrow.fs.FileSystem.from_uri(uri)


def join(base, rel: str) -> str:
    """``base`` (folder path or URI) joined with a relative POSIX name."""
    base = str(base)
    if is_uri(base):
        return base.rstrip("/") + "/" + rel
    return os.path.join(base, *rel.split("/"))


def _wanted(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in INPUT_EXTENSIONS


def list_inputs(source, exclude=None, problems: list | None = None) -> list[tuple[str, str]]:
    """The images under ``source`` (a file, a folder walked recursively, or a URI of either) as
    sorted ``(path, relative name)`` pairs. Hidden files (temp files) are left out; so are files
    whose extension is not an image's, and the folder ``exclude`` (the output, when inside).
    Broken or looping symbolic links and sub-folders that cannot be listed are appended to
    ``problems`` as ``(path, reason)`` (when given) instead of being skipped silently."""
    problems = problems if problems is not None else []
    source = str(source)
    if is_uri(source):
        import pyarrow.fs

        fs, root = _filesystem(source)
        skip = _filesystem(str(exclude))[1].rstrip("/") if exclude and is_uri(exclude) else None
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.NotFound:
            raise FileNotFoundError(f"input {source}: no such file or folder")
        if info.type == pyarrow.fs.FileType.File:
            return [(source, posixpath.basename(root))]
        found = []
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
            rel = posixpath.relpath(entry.path, root)
            if skip and (entry.path == skip or entry.path.startswith(skip + "/")):
                continue
            if entry.type == pyarrow.fs.FileType.File and _wanted(posixpath.basename(rel)):
                if not any(part.startswith(".") for part in rel.split("/")):
                    found.append((join(source, rel), rel))
        return sorted(found, key=lambda pair: pair[1])
    path = Path(source)
    if path.is_file():
        return [(str(path), path.name)]
    if not path.is_dir():
        raise FileNotFoundError(f"input {source}: no such file or folder")
    skip = os.path.realpath(exclude) if exclude and not is_uri(exclude) else None
    found = []

    def unreadable(exc: OSError) -> None:
        problems.append((str(exc.filename or source), f"cannot list directory ({exc.strerror or exc})"))

    for folder, dirs, files in os.walk(path, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and os.path.realpath(os.path.join(folder, d)) != skip)
        rel_folder = os.path.relpath(folder, path)
        for name in files:
            broken = None if name.startswith(".") else broken_link(Path(folder) / name)
            if broken:
                problems.append((os.path.join(folder, name), broken))
            elif _wanted(name):
                rel = name if rel_folder == "." else f"{Path(rel_folder).as_posix()}/{name}"
                found.append((os.path.join(folder, name), rel))
    return sorted(found, key=lambda pair: pair[1])


def output_name(rel: str, fmt: str = "same") -> str:
    """The output's relative name: the input's name with the extension ``quantart stylize`` gives it
    (``files.output_suffix``: ``"same"`` keeps a PNG/JPEG/WebP extension, else ``.png``; ``"png"``,
    ``"jpg"``, ``"jpeg"``, ``"webp"`` force the format). Raises ``ValueError`` for another ``fmt``."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    stem, ext = posixpath.splitext(rel)
    return stem + output_suffix(Path(rel), fmt)


def existing_outputs(output) -> set[str]:
    """Relative names of the complete files under ``output`` (one listing, for skipping)."""
    output = str(output)
    found = set()
    if is_uri(output):
        import pyarrow.fs

        fs, root = _filesystem(output)
        if fs.get_file_info(root).type != pyarrow.fs.FileType.Directory:
            return found
        for entry in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
            if entry.type == pyarrow.fs.FileType.File and entry.size:
                found.add(posixpath.relpath(entry.path, root))  # uploads are all-or-nothing
        return found
    if not os.path.isdir(output):
        return found
    for folder, _, files in os.walk(output):
        for name in files:
            full = os.path.join(folder, name)
            if not name.startswith(".") and is_complete(full):
                found.add(Path(os.path.relpath(full, output)).as_posix())
    return found


def is_complete(path) -> bool:
    """True when ``path`` exists, is not empty and (PNG / JPEG) ends with its end marker."""
    path = str(path)
    marker = _END_MARKERS.get(os.path.splitext(path)[1].lower(), b"")
    try:
        if is_uri(path):
            fs, inner = _filesystem(path)
            info = fs.get_file_info(inner)
            return info.size is not None and info.size > 0
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return False
            if not marker:
                return True
            f.seek(max(0, size - len(marker) - 64))
            return f.read().rstrip(b"\0").endswith(marker)
    except (OSError, ValueError):
        return False


def read_bytes(path) -> bytes:
    """The bytes of a local file or a URI (``OSError`` when it cannot be read)."""
    path = str(path)
    if is_uri(path):
        fs, inner = _filesystem(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` (local: temp file + rename; URI: one upload)."""
    path = str(path)
    if is_uri(path):
        fs, inner = _filesystem(path)
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(data)
        return
    write_bytes(path, data)


def write_image(array: np.ndarray, path) -> None:
    """Save a stylized HWC uint8 image; the format follows the extension (as ``quantart stylize``)."""
    path = str(path)
    if not is_uri(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        save_image(array, path)
        return
    with tempfile.TemporaryDirectory(prefix="quantart-") as tmp:  # same encoder as local outputs
        local = save_image(array, os.path.join(tmp, "out" + os.path.splitext(path)[1]))
        write_bytes_atomic(path, local.read_bytes())


def write_failures(path, failures: list[tuple[str, str]]) -> None:
    """The failures file: JSON lines ``{"path": ..., "reason": ...}``, one per bad input."""
    buf = io.StringIO()
    for src, reason in failures:
        buf.write(json.dumps({"path": src, "reason": reason}) + "\n")
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))
