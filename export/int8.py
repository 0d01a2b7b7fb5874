"""INT8 graphs for the OpenVINO CPU runner: post-training quantization with NNCF, gated by verification.

``quantart-export ... --int8-calibration DIR`` runs this after the ONNX graphs and the verification
references are written (see ``quantart_export.pipeline``):

1. The user's images in DIR (at most ``MAX_CALIBRATION_IMAGES``, centre-cropped and resized to the
   profile's ``opt_res``, the serving size) go through the exported FP32 graphs in OpenVINO: the images
   calibrate the content and style encoders; content i with style i+1 through the SGA graph gives the
   stylized latents that calibrate the decoder.
2. NNCF (``nncf.quantize``, the ``MIXED`` preset: symmetric weights, asymmetric activations, since
   GroupNorm/SiLU outputs are not centred) quantizes each encoder and the decoder read from its ONNX
   file; the nearest-code subgraph inside the style encoder (distance MatMul, ArgMin, code Gather) is
   left out (``ignored_scope``), and the SGA + nearest-code graph stays FP32 (``NOT_QUANTIZED``): a
   token is an argmin over near-tied distances, which INT8 scores flip.
3. Each quantized model is saved as OpenVINO IR beside the ONNX graphs (``<graph>.int8.xml`` + ``.bin``)
   and listed, with both files' sha256, under the manifest's ``int8`` section.
4. The same verification as ``quantart verify`` (``quantart_runtime.verify.verify_model`` with precision
   ``int8``: each graph fed the FP32 references, token agreement ≥ 99 %, image PSNR ≥ 30 dB, then the
   chain) judges them. A graph that fails is not used: its IR files are removed and the manifest's
   ``int8.gate`` records it as failed with its checks.

Manifest section (absent without --int8-calibration)::

    "int8": {"graphs": {graph: {"file", "sha256", "weights", "weights_sha256", "precision": "int8",
                                "inputs", "outputs"}},          # verified graphs only
             "gate": {"verified": [...], "failed": [...], "not_quantized": {graph: why},
                      "checks": [...], "reason": "..."},
             "calibration": {"images", "resolution", "preset", "nncf", "openvino"}}
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import numpy as np

from quantart_runtime.images import preprocess
from quantart_runtime.inputs import IMAGE_EXTENSIONS

from .errors import ExportError
from .manifest import _version

QUANTIZED = ("content_encoder", "style_encoder", "decoder")
NOT_QUANTIZED = {"sga": "the SGA + nearest-code graph stays FP32 (INT8 distance scores flip near-tied tokens)"}
MAX_CALIBRATION_IMAGES = 32
PRESET = "mixed"


def int8_file(graph: str) -> str:
    """The IR file name of ``graph``'s INT8 model (``decoder.int8.xml``; weights beside it as ``.bin``)."""
    return f"{graph}.int8.xml"


def _error(message: str):
    return ExportError(message)


def check_int8_setup(calibration_dir, kind: str) -> list[Path]:
    """The calibration image files of ``calibration_dir`` (sorted, at most ``MAX_CALIBRATION_IMAGES``).

    Raises ``ExportError`` (one line) before any work when NNCF or OpenVINO is missing, the model is not
    a Stage 2 model, or the directory is missing or holds no image files.
    """
    if kind != "stage2":
        raise _error("--int8-calibration is for Stage 2 models (the OpenVINO runner stylizes)")
    for module, extra in (("openvino", "cpu"), ("nncf", "int8")):
        try:
            __import__(module)
        except ImportError:
            raise _error(f"--int8-calibration needs {module} (pip install 'quantart[{extra}]')") from None
    root = Path(calibration_dir)
    if not root.is_dir():
        raise _error(f"--int8-calibration {root}: no such directory")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise _error(f"--int8-calibration {root}: holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files[:MAX_CALIBRATION_IMAGES]


def load_calibration_images(files, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: each readable image as RGB, centre-cropped square and resized (bicubic).

    Unreadable files are skipped; raises ``ExportError`` when none can be read.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    out, bad = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                out.append(np.asarray(ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC), dtype=np.uint8))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            bad.append(path.name)
    if not out:
        raise _error(f"--int8-calibration: none of the {len(files)} image files can be read "
                     f"(first: {bad[0]})")
    return np.stack(out)


def calibration_samples(core, directory: Path, manifest: dict, images: np.ndarray) -> dict[str, list[dict]]:
    """Per quantized graph, its calibration feeds: the images for the encoders, and for the decoder the
    stylized latents of content i with style i+1 through the exported FP32 graphs (OpenVINO, FP32)."""
    def compiled(graph):
        path = directory / manifest["graphs"]["fp32"][graph]["file"]
        return core.compile_model(core.read_model(str(path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY"})

    stride = int(manifest["latent_stride"])
    x = [preprocess([image], stride) for image in images]
    content, style, sga = compiled("content_encoder"), compiled("style_encoder"), compiled("sga")
    one = np.array([1.0], dtype=np.float32)
    latents = []
    for i in range(len(x)):
        h = content({"image": x[i]})["content_latent"]
        s = style({"image": x[(i + 1) % len(x)]})["style_latent"]
        out = sga({"content_latent": h, "style_latent": s, "content_ratio": one, "output_ratio": one})
        latents.append(np.array(out["stylized_latent"]))
    return {"content_encoder": [{"image": v} for v in x], "style_encoder": [{"image": v} for v in x],
            "decoder": [{"latent": v} for v in latents]}


def quantize_graph(core, onnx_path: Path, samples: list[dict]):
    """The NNCF-quantized ``ov.Model`` of one ONNX graph, calibrated on ``samples`` (its feeds); the
    nearest-code subgraph (if any) is kept out of quantization."""
    import nncf

    from quantart_runtime.backends.openvino import pinned_nodes

    model = core.read_model(str(onnx_path))
    code = sorted(pinned_nodes(model, ("code",)))
    scope = nncf.IgnoredScope(names=code, validate=False) if code else None
    with contextlib.redirect_stdout(sys.stderr):   # NNCF's progress bars: stdout holds results only
        return nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(samples), fast_bias_correction=True, ignored_scope=scope)


def _entry(directory: Path, graph: str, fp32_entry: dict) -> dict:
    from quantart_runtime.util import sha256_file

    xml = directory / int8_file(graph)
    return {"file": xml.name, "sha256": sha256_file(xml), "weights": xml.with_suffix(".bin").name,
            "weights_sha256": sha256_file(xml.with_suffix(".bin")), "precision": "int8",
            "inputs": fp32_entry.get("inputs", []), "outputs": fp32_entry.get("outputs", [])}


def quantize_int8(directory: Path, manifest: dict, files, log=lambda _m: None) -> dict:
    """Quantize ``QUANTIZED`` graphs of the model in ``directory`` and save their IR; no gate.

    ``manifest``: the model's manifest (FP32 graphs already in ``directory``); ``files``: calibration
    images from ``check_int8_setup``. Returns the ``int8`` section with every quantized graph listed
    (``gate_int8`` then keeps the verified ones). Raises ``ExportError`` when quantization fails.
    """
    import time

    import nncf
    import openvino as ov

    from quantart_runtime.util import one_line

    nncf.set_log_level(logging.ERROR)
    size = int(manifest["profile"]["opt_res"])
    images = load_calibration_images(files, size)
    core = ov.Core()
    t0 = time.perf_counter()
    samples = calibration_samples(core, directory, manifest, images)
    graphs = {}
    for graph in QUANTIZED:
        try:
            quantized = quantize_graph(core, directory / manifest["graphs"]["fp32"][graph]["file"], samples[graph])
        except Exception as exc:   # NNCF raises many types; one line, nothing written
            raise _error(f"INT8 quantization of {graph} failed: {one_line(exc)}") from None
        ov.save_model(quantized, str(directory / int8_file(graph)), compress_to_fp16=False)
        graphs[graph] = _entry(directory, graph, manifest["graphs"]["fp32"][graph])
    log(f"quantized {', '.join(QUANTIZED)} to INT8 (NNCF, {len(images)} images at {size}²) "
        f"in {time.perf_counter() - t0:.1f} s")
    return {"graphs": graphs,
            "calibration": {"images": int(len(images)), "resolution": f"{size}x{size}", "preset": PRESET,
                            "nncf": _version("nncf"), "openvino": _version("openvino")}}


def gate_int8(directory: Path, manifest: dict, section: dict, log=lambda _m: None) -> dict:
    """Judge the INT8 graphs of ``section`` with ``verify_model(..., "openvino", "int8")``; return the
    section with only the verified graphs listed and ``gate`` recording every verdict. Writes
    ``manifest.json`` (provisionally, for the verification) and removes failed graphs' IR files."""
    from quantart_runtime.util import write_json
    from quantart_runtime.verify import verify_model

    write_json(directory / "manifest.json", {**manifest, "int8": section})
    result = verify_model(directory, "openvino", "int8", cache_dir=False)
    quantized = [g for g in QUANTIZED if g in section["graphs"]]
    verified = [g for g in quantized if result.plan.get(g) == "int8"]
    failed = [g for g in quantized if g not in verified]
    for graph in failed:
        for path in (directory / int8_file(graph), (directory / int8_file(graph)).with_suffix(".bin")):
            path.unlink(missing_ok=True)
    gated = {**section, "graphs": {g: section["graphs"][g] for g in verified}}
    gated["gate"] = {"verified": verified, "failed": failed, "not_quantized": dict(NOT_QUANTIZED),
                     "checks": [c.as_dict() for c in result.checks], "reason": result.reason}
    log(f"INT8 gate: {', '.join(verified) or 'no graph'} verified"
        + (f"; {', '.join(failed)} failed (not used)" if failed else ""))
    return json.loads(json.dumps(gated))


def build_int8(directory: Path, manifest: dict, files, log=lambda _m: None) -> dict:
    """``quantize_int8`` then ``gate_int8``: the ``int8`` manifest section of the model being written in
    ``directory`` (see the module docstring). Raises ``ExportError`` when calibration fails."""
    return gate_int8(directory, manifest, quantize_int8(directory, manifest, files, log), log)
