"""INT8 graphs for the OpenVINO CPU runner: NNCF accuracy control layer by layer, gated by verification.

``quantart-export ... --int8-calibration DIR`` runs this after the ONNX graphs and the verification
references are written (see ``quantart_export.pipeline``):

1. The images in DIR are split, seeded and by content, into disjoint calibration and held-out
   validation sets (``quantart_export.int8_data``); calibration images also give a mirror and a random
   crop each. All are centre-cropped and resized to the profile's ``opt_res`` (the serving size) and go
   through the exported FP32 graphs in OpenVINO: images feed the encoders; content i with style i+1
   (within each set) through the SGA graph gives the stylized latents that feed the decoder. The stored
   verification references never calibrate (only the content codebook, a weight, is read from them).
2. NNCF ``quantize_with_accuracy_control`` (the ``MIXED`` preset: symmetric weights, asymmetric
   activations, since GroupNorm/SiLU outputs are not centred; SmoothQuant on, the best variant measured)
   quantizes each encoder and the decoder
   read from its ONNX file, judged on the validation set by our gate (``quantart_export.int8_accuracy``:
   tokens ≥ 99 % with near-ties forgiven, PSNR ≥ 30 dB, against the FP32 graph) and reverts the most
   sensitive layers to FP32 until the graph passes or ``--int8-max-fp32-layers`` layers are reverted.
   The nearest-code subgraph inside the style encoder (distance MatMul, ArgMin, code Gather) is left out
   (``ignored_scope``), and the SGA + nearest-code graph stays FP32 (``NOT_QUANTIZED``): a token is an
   argmin over near-tied distances, which INT8 scores flip.
3. Each graph that passes is saved as OpenVINO IR beside the ONNX graphs (``<graph>.int8.xml`` + ``.bin``)
   and listed, with both files' sha256, under the manifest's ``int8`` section; its precision is
   ``int8-mixed`` when layers were reverted, else ``int8``. A graph that cannot pass stays FP32.
4. The same verification as ``quantart verify`` (``quantart_runtime.verify.verify_model`` with precision
   ``int8``: each graph fed the stored FP32 references, then the chain) judges them. A graph that fails
   is not used: its IR files are removed and the manifest's ``int8.gate`` records it as failed.

Manifest section (absent without --int8-calibration)::

    "int8": {"graphs": {graph: {"file", "sha256", "weights", "weights_sha256",
                                "precision": "int8" | "int8-mixed", "fp32_layers": [...],
                                "inputs", "outputs"}},          # verified graphs only
             "accuracy_control": {graph: {"metric", "value", "gate", "passed", "fp32_layers",
                                          "fp32_layer_limit", "int8_layers", "fp32_by_design",
                                          "sensitivity": [{"metric", "layers"}, ...]}},   # every graph
             "gate": {"verified": [...], "failed": [...], "not_quantized": {graph: why},
                      "checks": [...], "reason": "..."},
             "calibration": {"seed", "calibration_images", "validation_images", "calibration_sha256",
                             "validation_sha256", "calibration_samples", "augmentation", "resolution",
                             "preset", "max_fp32_layers", "smooth_quant", "nncf", "openvino", ...}}
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
MAX_IMAGES = 64     # files read from the folder (sorted) before the split
PRESET = "mixed"
MIXED = "int8-mixed"


def int8_file(graph: str) -> str:
    """The IR file name of ``graph``'s INT8 model (``decoder.int8.xml``; weights beside it as ``.bin``)."""
    return f"{graph}.int8.xml"


def _error(message: str):
    return ExportError(message)


def check_int8_setup(calibration_dir, kind: str) -> list[Path]:
    """The image files of ``calibration_dir`` (sorted, at most ``MAX_IMAGES``).

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
    return files[:MAX_IMAGES]


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
    nearest-code subgraph (if any) is kept out of quantization. Blanket INT8, no accuracy control."""
    import nncf

    from quantart_runtime.backends.openvino import pinned_nodes

    model = core.read_model(str(onnx_path))
    code = sorted(pinned_nodes(model, ("code",)))
    scope = nncf.IgnoredScope(names=code, validate=False) if code else None
    with contextlib.redirect_stdout(sys.stderr):   # NNCF's progress bars: stdout holds results only
        return nncf.quantize(model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(samples), fast_bias_correction=True, ignored_scope=scope)


def _entry(directory: Path, graph: str, fp32_entry: dict, precision: str = "int8") -> dict:
    from quantart_runtime.util import sha256_file

    xml = directory / int8_file(graph)
    return {"file": xml.name, "sha256": sha256_file(xml), "weights": xml.with_suffix(".bin").name,
            "weights_sha256": sha256_file(xml.with_suffix(".bin")), "precision": precision,
            "inputs": fp32_entry.get("inputs", []), "outputs": fp32_entry.get("outputs", [])}


def _content_codebook(directory: Path, manifest: dict) -> np.ndarray:
    """The content codebook (a model weight) from the stored verification data; nothing else of the
    references is read here (they never calibrate)."""
    from quantart_runtime.verify import load_references

    return load_references(directory, manifest)[0]["content_codebook"]


def accuracy_controlled(core, directory: Path, manifest: dict, graph: str, calibration: list[dict],
                        validation: list[dict], codebook, options=None) -> dict:
    """Accuracy-controlled INT8 of one exported graph (``quantart_export.int8_accuracy``): the result of
    ``quantize_accurate`` with ``reverted`` (the layers accuracy control put back to FP32) and
    ``fp32_by_design`` (layers NNCF never quantizes, plus the nearest-code subgraph)."""
    from quantart_runtime.backends.openvino import pinned_nodes

    from .int8_accuracy import GraphGate, fp32_outputs, quantize_accurate

    model = core.read_model(str(directory / manifest["graphs"]["fp32"][graph]["file"]))
    code = pinned_nodes(model, ("code",))
    gate = GraphGate(graph, fp32_outputs(core, model, graph, validation),
                     codebook if graph == "content_encoder" else None)
    result = quantize_accurate(core, model, graph, calibration, validation, gate, code, options)
    candidates = {op for r in result["ranking_all"] for op in r[1]}
    result["reverted"] = [op for op in result["fp32_layers"] if op in candidates]
    result["fp32_by_design"] = len(result["fp32_layers"]) - len(result["reverted"]) + len(code)
    result["metric"], result["gate"] = gate.metric, gate.gate
    return result


def _record(result: dict, limit: int) -> dict:
    return {"metric": result["metric"], "value": result["value"], "gate": result["gate"],
            "passed": result["passed"], "fp32_layers": result["reverted"], "fp32_layer_limit": limit,
            "int8_layers": len(result["int8_layers"]), "fp32_by_design": result["fp32_by_design"],
            "sensitivity": result["ranking"]}


def quantize_int8(directory: Path, manifest: dict, files, log=lambda _m: None,
                  max_fp32_layers: int | None = None) -> dict:
    """Accuracy-controlled INT8 of the ``QUANTIZED`` graphs of the model in ``directory``; saves the IR of
    each graph that meets its gate on the validation images; no reference gate yet.

    ``manifest``: the model's manifest (FP32 graphs and verification data already in ``directory``);
    ``files``: the user's images (``check_int8_setup``), split into calibration and validation
    (``quantart_export.int8_data``). Returns the ``int8`` section with every passing graph listed
    (``gate_int8`` then keeps the verified ones). Raises ``ExportError`` when quantization fails.
    """
    import time

    import nncf
    import openvino as ov

    from quantart_runtime.util import one_line

    from .int8_accuracy import MAX_FP32_LAYERS, Options
    from .int8_data import AUGMENT_VIEWS, load_images, split_images

    limit = MAX_FP32_LAYERS if max_fp32_layers is None else int(max_fp32_layers)
    nncf.set_log_level(logging.ERROR)
    size = int(manifest["profile"]["opt_res"])
    split = split_images(files)
    calibration_images = load_images(split.calibration, size, augment=True, seed=split.seed)
    validation_images = load_images(split.validation, size)
    log(f"INT8: {len(split.calibration)} calibration images ({len(calibration_images)} with flips and crops) and "
        f"{len(split.validation)} held-out validation images at {size}² (seed {split.seed}, disjoint)")
    core = ov.Core()
    t0 = time.perf_counter()
    calibration = calibration_samples(core, directory, manifest, calibration_images)
    validation = calibration_samples(core, directory, manifest, validation_images)
    codebook = _content_codebook(directory, manifest)
    graphs, records = {}, {}
    options = Options(max_fp32_layers=limit)
    for graph in QUANTIZED:
        t1 = time.perf_counter()
        try:
            result = accuracy_controlled(core, directory, manifest, graph, calibration[graph], validation[graph],
                                         codebook, options)
        except Exception as exc:   # NNCF raises many types; one line, nothing written
            raise _error(f"INT8 quantization of {graph} failed: {one_line(exc)}") from None
        records[graph] = _record(result, limit)
        precision = MIXED if result["reverted"] else "int8"
        log(f"INT8 {graph}: {result['metric']} {result['value']:.4g} (gate {result['gate']:g}) with "
            f"{len(result['reverted'])} layers FP32 in {time.perf_counter() - t1:.0f} s"
            + ("" if result["passed"] else f" -- fails within the limit of {limit}, stays FP32"))
        if not result["passed"]:
            continue
        ov.save_model(result["model"], str(directory / int8_file(graph)), compress_to_fp16=False)
        graphs[graph] = {**_entry(directory, graph, manifest["graphs"]["fp32"][graph], precision),
                         "fp32_layers": result["reverted"]}
    log(f"INT8 accuracy control of {', '.join(QUANTIZED)} in {time.perf_counter() - t0:.1f} s")
    return {"graphs": graphs, "accuracy_control": records,
            "calibration": {**split.record(), "calibration_samples": int(len(calibration_images)),
                            "augmentation": list(AUGMENT_VIEWS), "resolution": f"{size}x{size}", "preset": PRESET,
                            "max_fp32_layers": limit, "smooth_quant": options.smooth_quant,
                            "nncf": _version("nncf"), "openvino": _version("openvino")}}


def gate_int8(directory: Path, manifest: dict, section: dict, log=lambda _m: None) -> dict:
    """Judge the INT8 graphs of ``section`` with ``verify_model(..., "openvino", "int8")``; return the
    section with only the verified graphs listed and ``gate`` recording every verdict. Writes
    ``manifest.json`` (provisionally, for the verification) and removes failed graphs' IR files."""
    from quantart_runtime.util import write_json
    from quantart_runtime.verify import INT8_PRECISIONS, PlanResult, verify_model

    if section["graphs"]:
        write_json(directory / "manifest.json", {**manifest, "int8": section})
        result = verify_model(directory, "openvino", "int8", cache_dir=False)
    else:
        result = PlanResult("openvino", "int8", {}, reason="no graph passed accuracy control")
    verified = [g for g in QUANTIZED if g in section["graphs"] and result.plan.get(g) in INT8_PRECISIONS]
    failed = [g for g in QUANTIZED if g not in verified]
    for graph in failed:
        for path in (directory / int8_file(graph), (directory / int8_file(graph)).with_suffix(".bin")):
            path.unlink(missing_ok=True)
    gated = {**section, "graphs": {g: section["graphs"][g] for g in verified}}
    gated["gate"] = {"verified": verified, "failed": failed, "not_quantized": dict(NOT_QUANTIZED),
                     "checks": [c.as_dict() for c in result.checks], "reason": result.reason}
    log(f"INT8 gate: {', '.join(f'{g} ' + section['graphs'][g]['precision'] for g in verified) or 'no graph'} "
        f"verified" + (f"; {', '.join(failed)} failed (stay fp32)" if failed else ""))
    return json.loads(json.dumps(gated))


def build_int8(directory: Path, manifest: dict, files, log=lambda _m: None, max_fp32_layers: int | None = None) -> dict:
    """``quantize_int8`` then ``gate_int8``: the ``int8`` manifest section of the model being written in
    ``directory`` (see the module docstring). Raises ``ExportError`` when calibration fails."""
    section = quantize_int8(directory, manifest, files, log, max_fp32_layers)
    return gate_int8(directory, manifest, section, log)
