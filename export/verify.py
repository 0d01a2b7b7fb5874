"""Verification: every exported graph run with ONNX Runtime (CPU) on the sample images, against PyTorch FP32.

Per resolution and precision, each graph is checked alone (fed PyTorch's inputs) and the chain
end to end (graphs fed each other's outputs, like the runtime; judged for FP32, reported for FP16):
  FP32: continuous latents max|Δ| ≤ 1e-3 (quantized latents where the tokens agree), token agreement
        ≥ 99.9 % (a differing token that is a near-tie for PyTorch's own latent counts as agreeing:
        FP32 rounding may break a tie either way; how many were forgiven is reported), image PSNR ≥ 45 dB;
  FP16: token agreement ≥ 99 %, image PSNR ≥ 30 dB (latent max|Δ| reported, not judged).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from quantart_runtime.tokens import TIE_REL, tie_tolerant_agreement  # noqa: F401  (shared with the runtime gate)
from quantart_runtime.util import psnr_unit

DEFAULT_THRESHOLDS = {
    "fp32_latent_max_abs": 1e-3,
    "fp32_token_agreement": 0.999,
    "fp32_psnr_db": 45.0,
    "fp16_token_agreement": 0.99,
    "fp16_psnr_db": 30.0,
}
DEFAULT_RESOLUTIONS = ((128, 128), (96, 128))
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class Check:
    """One verification result: a metric of one graph (or the chain) at one precision and resolution,
    its value and threshold (``None``: reported, not judged).
    """
    precision: str
    resolution: str
    graph: str
    metric: str
    value: float
    threshold: float | None  # None: reported only
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        """Whether the value meets the threshold (always true when only reported; NaN fails)."""
        if self.threshold is None:
            return True
        if math.isnan(self.value):
            return False
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def as_dict(self) -> dict:
        """JSON-safe: an infinite PSNR (identical images) becomes the string "inf"."""
        d = {**asdict(self), "passed": self.passed}
        if not math.isfinite(d["value"]):
            d["value"] = str(d["value"])
        return d


def _load_images(folder: Path, height: int, width: int) -> torch.Tensor:
    """All *.jpg of `folder`, resized to cover height × width, centre-cropped, NCHW in [-1, 1]."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"{folder}: no sample images (*.jpg)")
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            scale = max(height / im.height, width / im.width)
            size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
            im = im.resize(size, Image.BICUBIC)
            left, top = (im.width - width) // 2, (im.height - height) // 2
            im = im.crop((left, top, left + width, top + height))
            out.append(np.asarray(im, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


def sample_images(height: int, width: int, samples_dir: Path = SAMPLES_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """(content images, style images) of the project's samples at height × width."""
    return _load_images(samples_dir / "content", height, width), _load_images(samples_dir / "style", height, width)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction (0..1) of equal elements of ``a`` and ``b`` (token agreement)."""
    return float(np.mean(a == b))


def max_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """max|a − b|; with `where` (B,h,w), only at those latent positions of (B,D,h,w) tensors."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if where is not None:
        d = d * where[:, None, :, :]
    return float(d.max()) if d.size else 0.0


class _Sessions:
    def __init__(self, files: dict[str, Path]):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {n: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                         for n, p in files.items()}

    def run(self, graph: str, **feeds) -> list[np.ndarray]:
        feeds = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in feeds.items()}
        return self.sessions[graph].run(None, feeds)


class _Judge:
    def __init__(self, precision: str, resolution: str, thresholds: dict, variant: str = ""):
        self.precision, self.resolution, self.t = precision, resolution, thresholds
        self.variant = variant   # a graph variant (e.g. fused attention): its rows read "<graph> [variant]"
        self.checks: list[Check] = []

    def _add(self, graph, metric, value, key, higher, judged=True):
        threshold = self.t.get(f"{self.precision}_{key}") if judged else None
        graph = f"{graph} [{self.variant}]" if self.variant else graph
        self.checks.append(Check(self.precision, self.resolution, graph, metric, value, threshold, higher))

    def latent(self, graph, ours, ref, where=None, name="latent max|Δ|"):
        self._add(graph, name, max_abs(ours, ref, where), "latent_max_abs", False)

    def tokens(self, graph, ours, ref, name="token agreement", judged=True, latent=None, codebook=None):
        """Token agreement; with the reference's continuous latent and the codebook, FP32 near-ties
        (``tie_tolerant_agreement``) count as agreeing, and how many were forgiven is reported."""
        if latent is None or self.precision != "fp32":
            self._add(graph, name, agreement(ours, ref), "token_agreement", True, judged)
            return
        value, ties, _ = tie_tolerant_agreement(ours, ref, latent, codebook)
        self._add(graph, name, value, "token_agreement", True, judged)
        self._add(graph, "near-tie tokens forgiven", float(ties), "", True, judged=False)

    def image(self, graph, ours, ref, judged=True):
        self._add(graph, "image PSNR dB", psnr_unit(ours, ref, cap=None), "psnr_db", True, judged)


def _ratio(v: float) -> np.ndarray:
    return np.array([v], dtype=np.float32)


@torch.no_grad()
def _reference_stage2(model, x, ref) -> dict:
    h_x = model.content_latent(x)
    _, _, info_x = model.quantize_enc(h_x)
    quant_ref, _, info_ref = model.encode_real(ref)
    quant_x, quant_y, _, indices_y = model.stylize_latent(h_x, quant_ref, 1.0, 1.0)
    h_y = model.model_x2y(quant_x, quant_ref)  # the SGA output before its nearest code (for near-ties)
    return {"x": x, "ref": ref, "h_x": h_x, "x_tokens": info_x[2].numpy(), "quant_ref": quant_ref,
            "ref_tokens": info_ref[2].numpy(), "quant_y": quant_y, "y_tokens": indices_y.numpy(),
            "h_y": h_y.numpy(), "image": model.decode(quant_y).numpy()}


@torch.no_grad()
def _compare_stage2(model, r: dict, run: _Sessions, judge: _Judge, end_to_end_judged: bool):
    (content_latent,) = run.run("content_encoder", image=r["x"])
    judge.latent("content_encoder", content_latent, r["h_x"].numpy())
    _, _, info = model.quantize_enc(torch.from_numpy(content_latent))
    codes_x = model.quantize_enc.embedding.weight.numpy()
    codes_y = model.quantize_dec.embedding.weight.numpy()
    judge.tokens("content_encoder", info[2].numpy(), r["x_tokens"], "token agreement (quantize_enc)",
                 latent=r["h_x"].numpy(), codebook=codes_x)
    style_latent, style_tokens = run.run("style_encoder", image=r["ref"])
    judge.tokens("style_encoder", style_tokens, r["ref_tokens"])
    judge.latent("style_encoder", style_latent, r["quant_ref"].numpy(), style_tokens == r["ref_tokens"],
                 "latent max|Δ| (agreeing tokens)")
    stylized, tokens = run.run("sga", content_latent=r["h_x"], style_latent=r["quant_ref"],
                               content_ratio=_ratio(1.0), output_ratio=_ratio(1.0))
    judge.tokens("sga", tokens, r["y_tokens"], latent=r["h_y"], codebook=codes_y)
    judge.latent("sga", stylized, r["quant_y"].numpy(), tokens == r["y_tokens"], "latent max|Δ| (agreeing tokens)")
    (decoded,) = run.run("decoder", latent=r["quant_y"])
    judge.image("decoder", decoded, r["image"])

    e2e_latent, e2e_tokens = run.run("sga", content_latent=content_latent, style_latent=style_latent,
                                     content_ratio=_ratio(1.0), output_ratio=_ratio(1.0))
    (e2e_image,) = run.run("decoder", latent=e2e_latent)
    judge.tokens("end to end", e2e_tokens, r["y_tokens"], judged=end_to_end_judged, latent=r["h_y"],
                 codebook=codes_y)
    judge.image("end to end", e2e_image, r["image"], judged=end_to_end_judged)


@torch.no_grad()
def _reference_stage1(model, x, _ref) -> dict:
    quant, _, info = model.encode(x)
    return {"x": x, "quant": quant, "tokens": info[2].numpy(), "image": model.decode(quant).numpy()}


@torch.no_grad()
def _compare_stage1(model, r: dict, run: _Sessions, judge: _Judge, end_to_end_judged: bool):
    latent, tokens = run.run("encoder", image=r["x"])
    judge.tokens("encoder", tokens, r["tokens"])
    judge.latent("encoder", latent, r["quant"].numpy(), tokens == r["tokens"], "latent max|Δ| (agreeing tokens)")
    (decoded,) = run.run("decoder", latent=r["quant"])
    judge.image("decoder", decoded, r["image"])
    (e2e_image,) = run.run("decoder", latent=latent)
    judge.image("end to end", e2e_image, r["image"], judged=end_to_end_judged)


def verify_graphs(model, files: dict[str, dict[str, Path]], resolutions=DEFAULT_RESOLUTIONS,
                  thresholds: dict | None = None, samples_dir: Path = SAMPLES_DIR,
                  variants: dict[str, dict[str, dict[str, Path]]] | None = None) -> list[Check]:
    """Run the checks for every precision in `files` ({precision: {graph: path}}) at every resolution.

    Each graph is judged fed PyTorch FP32's inputs. The end-to-end chain (graphs fed each other's
    outputs) is judged for FP32; for FP16 it is reported only: FP16 rounding flips a few near-tie
    content tokens and SGA's attention spreads every flip over the image, so the chain measures how
    chaotic the model is (extreme for random weights) rather than the export.

    `variants` ({label: {precision: {graph: path}}}, e.g. the fused-attention ONNX Runtime graphs): each
    replaces those graphs of `files` and is judged the same way, with the same thresholds (its rows'
    graph reads "<graph> [label]"); graphs it lacks run as in `files`.
    """
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    stage2 = model.config["kind"] == "stage2"
    reference, compare = (_reference_stage2, _compare_stage2) if stage2 else (_reference_stage1, _compare_stage1)
    sets = [(precision, "", graphs) for precision, graphs in files.items()]
    for label, by_precision in (variants or {}).items():
        sets += [(precision, label, {**files[precision], **graphs})
                 for precision, graphs in by_precision.items() if graphs and precision in files]
    sessions = [(precision, label, _Sessions(graphs)) for precision, label, graphs in sets]
    checks: list[Check] = []
    for height, width in resolutions:
        x, ref = sample_images(height, width, samples_dir)
        r = reference(model, x, ref)
        for precision, label, run in sessions:
            judge = _Judge(precision, f"{height}x{width}", thresholds, label)
            compare(model, r, run, judge, end_to_end_judged=precision == "fp32")
            checks.extend(judge.checks)
    return checks


def format_table(checks: list[Check]) -> str:
    """The verification results as a fixed-width text table."""
    rows = [("precision", "resolution", "graph", "metric", "value", "threshold", "result")]
    for c in checks:
        value = f"{c.value:.6g}" if c.metric.startswith(("latent", "token")) else f"{c.value:.2f}"
        if c.threshold is None:
            limit = "(reported)"
        else:
            limit = ("≥ " if c.higher_is_better else "≤ ") + f"{c.threshold:g}"
        rows.append((c.precision, c.resolution, c.graph, c.metric, value, limit, "ok" if c.passed else "FAIL"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
