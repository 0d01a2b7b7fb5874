"""Read and validate an exported model directory's manifest.json (see docs/model_format.md).

``load_manifest`` checks the format version, the kind, the latent geometry, that every graph of the
requested precision is listed and present, and (by default) that each file's sha256 matches; any
problem raises ``ModelError`` with a one-line reason naming the directory.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelError
from .util.digest import sha256_file

__all__ = ["GRAPHS", "PRECISIONS", "SUPPORTED_FORMAT_VERSIONS", "graph_names", "graph_path", "int8_digests",
           "load_manifest", "sha256_file", "verified_digests"]

SUPPORTED_FORMAT_VERSIONS = (1,)
PRECISIONS = ("fp32", "fp16")
GRAPHS = {
    "stage2": ("content_encoder", "style_encoder", "sga", "decoder"),
    "stage1": ("encoder", "decoder"),
}


def _positive_int(manifest: dict, key: str, where: str) -> int:
    value = manifest.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelError(f"{where}: manifest.json field '{key}' must be a positive integer, got {value!r}")
    return value


def load_manifest(model_dir, precision: str | None = "fp32", verify: bool = True) -> dict:
    """Parse and validate ``model_dir/manifest.json``; return it as a dict.

    ``precision``: the graph set that will be used ("fp32" or "fp16"); its graphs must be listed and
    present (and, with ``verify``, match their sha256). ``None`` checks every precision listed. With
    ``verify`` and the FP32 graphs (or ``None``), the INT8 IR files of the ``int8`` section
    (``quantart-export --int8-calibration``) are checked the same way.
    Each file is hashed once; the digests are kept under the manifest's private ``"_sha256"`` key
    ({file name: sha256}, see ``verified_digests``) so later steps (the TensorRT engine cache key)
    do not hash the files again. Raises ``ModelError`` with a one-line reason.
    """
    root = Path(model_dir)
    where = f"model {root}"
    if not root.exists():
        raise ModelError(f"{where}: no such directory")
    if not root.is_dir():
        raise ModelError(f"{where}: not a directory (expected a model directory written by quantart-export)")
    path = root / "manifest.json"
    if not path.is_file():
        raise ModelError(f"{where}: no manifest.json (expected a model directory written by quantart-export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{where}: manifest.json is unreadable or not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ModelError(f"{where}: manifest.json must hold a JSON object")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelError(f"{where}: manifest format_version {version!r} is not supported by this runtime "
                         f"(supported: {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); re-export the model "
                         f"or upgrade quantart")
    kind = manifest.get("kind")
    if kind not in GRAPHS:
        raise ModelError(f"{where}: manifest kind {kind!r} is not one of {', '.join(GRAPHS)}")
    stride = _positive_int(manifest, "latent_stride", where)
    if stride & (stride - 1):
        raise ModelError(f"{where}: latent_stride {stride} is not a power of two")
    _positive_int(manifest, "embed_dim", where)
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ModelError(f"{where}: manifest.json lists no graphs")
    if precision is None:
        wanted = [p for p in PRECISIONS if p in graphs]
        if not wanted:
            raise ModelError(f"{where}: manifest.json lists no fp32 or fp16 graphs")
    elif precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    elif precision not in graphs:
        have = ", ".join(sorted(graphs)) or "none"
        raise ModelError(f"{where}: has no {precision} graphs (it has: {have}); re-export with "
                         f"--precision {precision} or both")
    else:
        wanted = [precision]
    digests: dict[str, str] = {}
    for prec in wanted:
        listed = graphs[prec]
        if not isinstance(listed, dict):
            raise ModelError(f"{where}: manifest graphs.{prec} must be an object")
        for name in GRAPHS[kind]:
            entry = listed.get(name)
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                raise ModelError(f"{where}: manifest lists no {prec} graph '{name}'")
            file = root / entry["file"]
            if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
                raise ModelError(f"{where}: graph file {entry['file']!r} must be a plain name inside the directory")
            if not file.is_file():
                raise ModelError(f"{where}: graph file {entry['file']} is missing")
            if verify:
                expected = entry.get("sha256")
                if not isinstance(expected, str):
                    raise ModelError(f"{where}: manifest has no sha256 for {entry['file']}")
                actual = sha256_file(file)
                digests[entry["file"]] = actual
                if actual != expected.lower():
                    raise ModelError(f"{where}: {entry['file']} does not match its sha256 in manifest.json "
                                     f"(corrupt or modified file; re-export the model)")
    if verify and precision in (None, "fp32"):
        digests.update(_check_int8(root, manifest, where))
    manifest["_sha256"] = digests
    return manifest


_INT8_FILES = (("file", "sha256"), ("weights", "weights_sha256"))


def _int8_entries(manifest: dict) -> dict:
    graphs = (manifest.get("int8") or {}).get("graphs") if isinstance(manifest.get("int8"), dict) else None
    return graphs if isinstance(graphs, dict) else {}


def _check_int8(root: Path, manifest: dict, where: str) -> dict[str, str]:
    """The INT8 IR files the manifest's ``int8.graphs`` lists (``quantart_export.int8``), checked like the
    graph files: plain names, present, sha256 as listed. Returns {file name: sha256}."""
    digests = {}
    for graph, entry in _int8_entries(manifest).items():
        if not isinstance(entry, dict):
            raise ModelError(f"{where}: manifest int8 entry of {graph!r} must be an object")
        for key, digest_key in _INT8_FILES:
            name = entry.get(key)
            if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
                raise ModelError(f"{where}: INT8 file {name!r} of {graph} must be a plain name inside the directory")
            if not (root / name).is_file():
                raise ModelError(f"{where}: INT8 file {name} of {graph} is missing")
            actual = sha256_file(root / name)
            if actual != str(entry.get(digest_key, "")).lower():
                raise ModelError(f"{where}: {name} does not match its sha256 in manifest.json "
                                 f"(corrupt or modified file; re-export the model)")
            digests[name] = actual
    return digests


def int8_digests(model_dir, manifest: dict) -> dict[str, str]:
    """{file name: sha256 on disk} of the INT8 IR files the manifest lists (a missing file: ``"missing"``);
    empty for a model without INT8 IR. The precision plan cache keys on these."""
    root = Path(model_dir)
    out = {}
    for entry in _int8_entries(manifest).values():
        for key, _ in _INT8_FILES:
            name = entry.get(key) if isinstance(entry, dict) else None
            if isinstance(name, str) and name and not Path(name).is_absolute() and ".." not in Path(name).parts:
                out[name] = sha256_file(root / name) if (root / name).is_file() else "missing"
    return out


def verified_digests(manifest: dict) -> dict[str, str]:
    """{graph file name: sha256} computed by ``load_manifest(verify=True)`` (empty without verify)."""
    return dict(manifest.get("_sha256") or {})


def graph_path(model_dir, manifest: dict, precision: str, graph: str) -> Path:
    """Path of one graph file of a validated manifest."""
    try:
        return Path(model_dir) / manifest["graphs"][precision][graph]["file"]
    except KeyError:
        raise ModelError(f"model {model_dir}: manifest lists no {precision} graph '{graph}'") from None


def graph_names(manifest: dict) -> tuple[str, ...]:
    """The graph names a manifest of its kind must list (``GRAPHS[kind]``); a runner of the streaming
    segments gets a view of the manifest naming them under ``"_graph_names"``."""
    return tuple(manifest.get("_graph_names") or GRAPHS[manifest["kind"]])
