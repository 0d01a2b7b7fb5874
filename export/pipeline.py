"""export_model: checkpoint → verified model directory, written atomically (temp dir + rename)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import ExportError, VerificationError  # noqa: F401  (public here too)

PRECISION_CHOICES = ("fp32", "fp16", "both")


def _precisions(precision: str) -> list[str]:
    if precision not in PRECISION_CHOICES:
        raise ExportError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISION_CHOICES)})")
    return ["fp32", "fp16"] if precision == "both" else [precision]


def default_out_dir(checkpoint: Path) -> Path:
    """Beside the checkpoint: `<name>_onnx` (name without its suffix)."""
    checkpoint = Path(checkpoint)
    stem = checkpoint.name if checkpoint.is_dir() else checkpoint.stem
    return checkpoint.resolve().parent / f"{stem}_onnx"


def _load(checkpoint: Path, config, trust: bool):
    from quantart.checkpoint import CheckpointError, load_model

    try:
        model = load_model(checkpoint, config=config, trust=trust)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    except (OSError, ValueError) as exc:  # e.g. an unreadable --config file
        raise ExportError(f"{checkpoint}: cannot load: {exc}") from None
    if model.config["kind"] == "stage1" and not model.config.get("use_quantize", True):
        raise ExportError(f"{checkpoint}: unsupported architecture: a Stage 1 model without a quantizer "
                          f"(use_quantize=False) has no nearest-codebook encoder to export")
    return model


def _profile(stride: int, min_res, opt_res, max_res, max_batch) -> dict:
    from .manifest import DEFAULT_PROFILE

    prof = {"min_res": stride if min_res is None else int(min_res),
            "opt_res": DEFAULT_PROFILE["opt_res"] if opt_res is None else int(opt_res),
            "max_res": DEFAULT_PROFILE["max_res"] if max_res is None else int(max_res),
            "max_batch": DEFAULT_PROFILE["max_batch"] if max_batch is None else int(max_batch)}
    for key in ("min_res", "opt_res", "max_res"):
        if prof[key] < stride or prof[key] % stride:
            raise ExportError(f"--{key.replace('_', '-')} {prof[key]} is not a positive multiple of the latent "
                              f"stride {stride}")
    if not prof["min_res"] <= prof["opt_res"] <= prof["max_res"]:
        raise ExportError(f"the profile needs min-res ≤ opt-res ≤ max-res, got "
                          f"{prof['min_res']} / {prof['opt_res']} / {prof['max_res']}")
    if prof["max_batch"] < 1:
        raise ExportError(f"--max-batch must be at least 1, got {prof['max_batch']}")
    return prof


def _check_opset(opset: int) -> None:
    import onnx
    from torch.onnx._constants import ONNX_MAX_OPSET

    from .onnx_export import MIN_OPSET

    top = min(ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= top:
        raise ExportError(f"--opset {opset} is not supported (choose {MIN_OPSET}..{top})")


def _check_resolutions(resolutions, stride: int) -> list[tuple[int, int]]:
    out = []
    for res in resolutions:
        h, w = (int(v) for v in res)
        if h < stride or w < stride or h % stride or w % stride:
            raise ExportError(f"verification resolution {h}x{w} is not a multiple of the latent stride {stride}")
        out.append((h, w))
    if not out:
        raise ExportError("verification needs at least one resolution")
    return out


OWNER_FILE = ".quantart-export.pid"   # in a temp directory: the exporting process (removed before the rename)
STALE_UNOWNED_S = 60.0                # a temp directory without an owner file is stale after this


def _owner_alive(tmp: Path) -> bool:
    try:
        pid = int((tmp / OWNER_FILE).read_text().strip())
    except (OSError, ValueError):
        return time.time() - tmp.lstat().st_mtime < STALE_UNOWNED_S
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_exports(out_dir: Path) -> list[Path]:
    """Remove the temp directories (``.{name}.*.tmp`` / ``.old``) that a killed export to ``out_dir``
    left beside it, unless their exporting process is still running. Returns what was removed."""
    from quantart_runtime.util.atomic import clean_stale

    out_dir = Path(out_dir)
    if not out_dir.parent.is_dir():
        return []
    live = [p for pattern in (f".{out_dir.name}.*.tmp", f".{out_dir.name}.*.old")
            for p in out_dir.parent.glob(pattern) if p.is_dir() and _owner_alive(p)]
    if live:  # another export to the same directory is running: leave its files alone
        return []
    return clean_stale(out_dir)


def _check_inputs_outside(out_dir: Path, inputs) -> None:
    """``out_dir`` would be replaced as a whole: refuse when it is or holds one of ``inputs``."""
    try:
        target = out_dir.resolve()
    except (OSError, RuntimeError):
        return
    for item in inputs:
        if item is None or isinstance(item, dict):
            continue
        try:
            path = Path(item).resolve()
        except (OSError, RuntimeError):
            continue
        if path == target or target in path.parents:
            raise ExportError(f"{out_dir}: holds the input {item}; --force would delete it "
                              f"(choose another --out)")


def _make_temp_dir(out_dir: Path) -> Path:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the model directory is read by other users
        (tmp / OWNER_FILE).write_text(str(os.getpid()))
        return tmp
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot write the output directory here: "
                          f"{exc.strerror or exc.__class__.__name__}") from None


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    from quantart_runtime.util.atomic import replace

    (tmp / OWNER_FILE).unlink(missing_ok=True)
    if out_dir.exists() or out_dir.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        replace(out_dir, old / "replaced")
        replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        replace(tmp, out_dir)


def export_model(checkpoint, out_dir=None, config=None, precision: str = "fp32", opset: int | None = None,
                 min_res: int | None = None, opt_res: int | None = None, max_res: int | None = None,
                 max_batch: int | None = None, verify: bool = True, force: bool = False, trust: bool = False,
                 verify_res=None, thresholds: dict | None = None, int8_calibration=None,
                 int8_max_fp32_layers: int | None = None, log: Callable[[str], None] | None = None,
                 report: Callable[[str], None] | None = None) -> Path:
    """Export a QuantArt checkpoint (anything quantart.load_model reads) to an ONNX model directory.

    Returns the directory (default: `<checkpoint name>_onnx` beside the checkpoint). Raises
    ExportError on bad input (nothing written) and VerificationError when ONNX Runtime disagrees
    with PyTorch beyond the thresholds (nothing written). `verify_res`: [(H, W), ...] for the
    verification (default 128x128 and 96x128); `thresholds` overrides verify.DEFAULT_THRESHOLDS keys;
    `log` receives progress lines, `report` the verification table (default: `log`).
    `int8_calibration`: a directory of images; also write NNCF INT8 OpenVINO IR of the encoders and the
    decoder from NNCF accuracy control on them (calibration and held-out validation split from the folder;
    at most ``int8_max_fp32_layers`` layers reverted to FP32 per graph), each kept only when it passes the
    precision gate (``quantart_export.int8``).
    """
    log = log or (lambda _msg: None)
    report = report or log
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise ExportError(f"{checkpoint}: no such checkpoint")
    precisions = _precisions(precision)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint)
    if (out_dir.exists() or out_dir.is_symlink()) and not force:
        raise ExportError(f"{out_dir}: already exists (pass --force to replace it)")
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a directory")
    if out_dir.exists():
        _check_inputs_outside(out_dir, [checkpoint, config])
    clean_stale_exports(out_dir)

    from .onnx_export import DEFAULT_OPSET
    from .verify import DEFAULT_RESOLUTIONS, DEFAULT_THRESHOLDS

    opset = DEFAULT_OPSET if opset is None else int(opset)
    _check_opset(opset)
    unknown = sorted(set(thresholds or {}) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise ExportError(f"unknown verification threshold(s) {', '.join(unknown)} "
                          f"(known: {', '.join(DEFAULT_THRESHOLDS)})")
    model = _load(checkpoint, config, trust)
    stride = int(model.stride)
    profile = _profile(stride, min_res, opt_res, max_res, max_batch)
    resolutions = _check_resolutions(DEFAULT_RESOLUTIONS if verify_res is None else verify_res, stride)
    calibration_files = None
    if int8_calibration is not None:
        from .int8 import check_int8_setup

        calibration_files = check_int8_setup(int8_calibration, model.config["kind"])
        if int8_max_fp32_layers is not None and int(int8_max_fp32_layers) < 0:
            raise ExportError(f"--int8-max-fp32-layers must be 0 or more, got {int8_max_fp32_layers}")
        if "fp32" not in precisions:
            raise ExportError("--int8-calibration quantizes the FP32 graphs: use --precision fp32 or both")

    tmp = _make_temp_dir(out_dir)
    try:
        written, entries, fused = _export_into(tmp, model, precisions, opset, stride, log)
        streaming = None
        if model.config["kind"] == "stage2":   # the streaming schedule: any image size (quantart_export.segments)
            from .segments import export_segments

            streaming = export_segments(model, tmp, log)
        from .reference import write_reference_data

        # for `quantart verify`: the verification sizes plus the profile's opt_res (the serving size), since
        # BF16 token flips that stay under the gate at small sizes can exceed it at the size that is run
        opt = (profile["opt_res"], profile["opt_res"])
        reference_data = write_reference_data(tmp, model, resolutions + ([opt] if opt not in resolutions else []))
        verification = None
        if verify:
            from .verify import format_table, verify_graphs

            t0 = time.perf_counter()
            checks = verify_graphs(model, written, resolutions, thresholds, variants={FUSED_LABEL: fused})
            log(f"verified against PyTorch in {time.perf_counter() - t0:.1f} s")
            report(format_table(checks))
            failed = [c for c in checks if not c.passed]
            if failed:
                raise VerificationError(
                    f"verification failed: {len(failed)} of {len(checks)} checks below threshold "
                    f"(first: {failed[0].precision} {failed[0].resolution} {failed[0].graph} "
                    f"{failed[0].metric} = {failed[0].value:.6g})", checks)
            verification = {"passed": True, "resolutions": [f"{h}x{w}" for h, w in resolutions],
                            "thresholds": {**DEFAULT_THRESHOLDS, **(thresholds or {})},
                            "checks": [c.as_dict() for c in checks]}
        from .manifest import build_manifest, write_manifest

        options = {"precision": precision, "opset": opset, "verify": verify, "trust_checkpoint": trust,
                   "config": None if config is None or isinstance(config, dict) else str(config),
                   "verify_res": [f"{h}x{w}" for h, w in resolutions] if verify else None,
                   "int8_calibration": None if int8_calibration is None else str(int8_calibration)}
        manifest = build_manifest(model, entries, opset=opset, profile=profile, checkpoint=checkpoint,
                                  options=options, verification=verification, verification_data=reference_data)
        if streaming is not None:
            manifest["streaming"] = streaming
            if verify:
                _verify_streaming(model, tmp, manifest, resolutions, thresholds, report)
        if calibration_files is not None:
            from .int8 import build_int8

            manifest["int8"] = build_int8(tmp, manifest, calibration_files, log, int8_max_fp32_layers)
        write_manifest(tmp, manifest)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {out_dir}")
    return out_dir


FUSED_LABEL = "ort fused attention"  # verification rows of the fused-attention graphs: "<graph> [ort fused attention]"


def _verify_streaming(model, tmp: Path, manifest: dict, resolutions, thresholds, report) -> None:
    """The streaming executor against PyTorch (``verify_streaming``); its checks join the manifest's."""
    from .verify import DEFAULT_THRESHOLDS, format_table
    from .verify_streaming import verify_streaming

    checks = verify_streaming(model, tmp, manifest, resolutions, {**DEFAULT_THRESHOLDS, **(thresholds or {})})
    report(format_table(checks))
    failed = [c for c in checks if not c.passed]
    if failed:
        raise VerificationError(f"streaming verification failed: {failed[0].resolution} {failed[0].graph} "
                                f"{failed[0].metric} = {failed[0].value:.6g}", checks)
    if manifest.get("verification"):
        manifest["verification"]["checks"].extend(c.as_dict() for c in checks)


def _export_into(tmp: Path, model, precisions, opset: int, stride: int, log):
    """Export every graph in every precision into ``tmp``; beside each graph that attends, its ONNX Runtime
    variant with fused attention (``write_fused_variant``). Returns (written {precision: {graph: path}},
    manifest entries, fused {precision: {graph: path}})."""
    from .graphs import graph_specs
    from .manifest import graph_entry, graph_file
    from .onnx_export import GraphExportError, export_graph
    from .precision import to_precision

    written: dict[str, dict[str, Path]] = {}
    entries: dict[str, dict[str, dict]] = {}
    fused: dict[str, dict[str, Path]] = {}
    for precision in precisions:
        written[precision], entries[precision], fused[precision] = {}, {}, {}
        for spec in graph_specs(model):
            path = tmp / graph_file(spec.name, precision)
            t0 = time.perf_counter()
            try:
                proto = export_graph(spec, to_precision(spec.module, precision), path, stride=stride, opset=opset,
                                     precision=precision)
            except GraphExportError as exc:
                raise ExportError(f"unsupported architecture: {exc}") from None
            log(f"exported {path.name} in {time.perf_counter() - t0:.1f} s")
            written[precision][spec.name] = path
            entries[precision][spec.name] = graph_entry(spec, precision, path)
            variant = write_fused_variant(proto, path)
            if variant is not None:
                entries[precision][spec.name]["ort_fused"] = variant
                fused[precision][spec.name] = path.parent / variant["file"]
                log(f"exported {variant['file']} ({variant['attention']} attention(s) fused as {variant['op']})")
    return written, entries, fused


def write_fused_variant(proto, path: Path) -> dict | None:
    """Write the ONNX Runtime variant of the graph ``proto`` (saved at ``path``) with every attention fused
    (``quantart_export.attention_fusion``) as ``<path stem>.ort.onnx``, atomically; returns its manifest
    entry (``manifest.fused_entry``), or ``None`` when the graph has no attention to fuse (nothing written)."""
    from quantart_runtime.util import atomic_open

    from .attention_fusion import count_fused, fuse_attention
    from .manifest import fused_entry, fused_file

    fused = fuse_attention(proto)
    n = count_fused(fused)
    if n == 0:
        return None
    out = path.parent / fused_file(path.name)
    with atomic_open(out) as f:
        f.write(fused.SerializeToString())
    return fused_entry(out, n)
