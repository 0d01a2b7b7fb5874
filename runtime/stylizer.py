"""The Stylizer: exported QuantArt Stage 2 graphs behind a numpy API (no torch).

    stylizer = Stylizer.load("model_dir")                  # validates manifest.json + sha256
    code = stylizer.encode_style(style_rgb, size=256)      # StyleCode, LRU-cached by image hash + size
    out = stylizer.stylize(content_rgb, code)              # (H, W, 3) uint8 in, same size out

Pipeline per batch (images of one padded size): ``preprocess`` (reflect-pad to the latent stride,
x/127.5 - 1) -> ``content_encoder`` -> ``sga`` (with the style latent repeated to the batch) ->
``decoder`` -> ``postprocess`` (crop, clip, rint((y+1)*127.5)). Each graph step is a method so that
benchmarks can time the graphs and the overhead separately; ``graph_calls`` counts runner calls.
"""
from __future__ import annotations

import hashlib
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import images as im
from .backends import select_backend
from .errors import ImageError, ModelError
from .manifest import load_manifest

PIXEL_BUDGET = 1024 * 1024   # default batch: about this many padded pixels per graph call
STYLE_CACHE_SIZE = 32


@dataclass(frozen=True, eq=False)
class StyleCode:
    """A style image encoded once: quantized style latent (1, D, hs, ws) float32 and its codebook
    indices (1, hs, ws) int64; ``size`` is the (H, W) the style image was resized to."""
    latent: np.ndarray
    indices: np.ndarray
    size: tuple[int, int]
    key: str | None = None
    _repeated: dict = field(default_factory=dict, repr=False)

    def batched(self, batch: int) -> np.ndarray:
        """The latent repeated to ``batch`` (the sga graph takes content and style of equal batch)."""
        if batch == 1:
            return self.latent
        rep = self._repeated.get(batch)
        if rep is None:
            rep = np.ascontiguousarray(np.repeat(self.latent, batch, axis=0))
            if len(self._repeated) < 8:
                self._repeated[batch] = rep
        return rep


def _ratio(value, name: str) -> np.ndarray:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return np.array([value], dtype=np.float32)


class Stylizer:
    def __init__(self, runner, manifest: dict, style_cache_size: int = STYLE_CACHE_SIZE):
        if manifest.get("kind") != "stage2":
            raise ModelError(f"model {runner.model_dir}: a {manifest.get('kind')} export has no style "
                             f"transfer graphs; stylization needs a Stage 2 model")
        self.runner = runner
        self.manifest = manifest
        self.stride = int(manifest["latent_stride"])
        self.embed_dim = int(manifest["embed_dim"])
        profile = manifest.get("profile") or {}
        self.max_batch = int(profile.get("max_batch") or 32)
        self.max_res = profile.get("max_res")
        self.graph_calls: Counter = Counter()
        self.style_cache_size = style_cache_size
        self._styles: OrderedDict[tuple, StyleCode] = OrderedDict()
        self._lock = threading.Lock()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir, backend: str = "auto", device: int = 0, providers=None,
             precision: str = "fp32", verify: bool = True, style_cache_size: int = STYLE_CACHE_SIZE,
             **options) -> "Stylizer":
        """Validate ``model_dir`` (manifest format, graph files, sha256) and start ``backend``.

        backend: "auto" (TensorRT if available, else ONNX Runtime CUDA, else CPU), "onnxruntime" or
        "tensorrt". ``providers`` (ONNX Runtime) and other ``options`` go to the Runner.
        Raises ``ModelError`` (``BackendError`` for backend problems) with a one-line reason.
        """
        manifest = load_manifest(model_dir, precision=precision, verify=verify)
        if manifest["kind"] != "stage2":
            raise ModelError(f"model {model_dir}: a {manifest['kind']} export has no style transfer "
                             f"graphs; stylization needs a Stage 2 model")
        runner_cls = select_backend(backend)
        if providers is not None:
            options["providers"] = providers
        runner = runner_cls(Path(model_dir), manifest, precision=precision, device=device, **options)
        runner.activate()
        return cls(runner, manifest, style_cache_size=style_cache_size)

    def close(self) -> None:
        self.runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def backend(self) -> str:
        return self.runner.name

    # -- the graphs, one call each ---------------------------------------------------------
    def _infer(self, graph: str, feeds: dict) -> dict:
        self.graph_calls[graph] += 1
        return self.runner.infer(graph, feeds)

    def content_latent(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) float32 in [-1, 1] -> continuous content latent (B, D, h, w)."""
        return self._infer("content_encoder", {"image": x})["content_latent"]

    def style_latent(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, Hs, Ws) float32 -> (quantized style latent (B, D, hs, ws), indices (B, hs, ws))."""
        out = self._infer("style_encoder", {"image": x})
        return out["style_latent"], out["style_indices"]

    def stylize_latent(self, content_latent: np.ndarray, style_latent: np.ndarray,
                       content_ratio=1.0, output_ratio=1.0) -> tuple[np.ndarray, np.ndarray]:
        """SGA + nearest code -> (stylized latent (B, D, h, w), indices (B, h, w))."""
        out = self._infer("sga", {"content_latent": content_latent, "style_latent": style_latent,
                                  "content_ratio": _ratio(content_ratio, "content_ratio"),
                                  "output_ratio": _ratio(output_ratio, "output_ratio")})
        return out["stylized_latent"], out["indices"]

    def decode(self, latent: np.ndarray) -> np.ndarray:
        """(B, D, h, w) -> (B, 3, H, W) float32 in about [-1, 1] (not clamped)."""
        return self._infer("decoder", {"latent": latent})["image"]

    def run_graphs(self, x: np.ndarray, style: StyleCode, content_ratio=1.0, output_ratio=1.0) -> np.ndarray:
        """Preprocessed batch -> decoded batch: content_encoder -> sga -> decoder (no pre/post)."""
        h = self.content_latent(x)
        y, _ = self.stylize_latent(h, style.batched(x.shape[0]), content_ratio, output_ratio)
        return self.decode(y)

    # -- pre/post-processing ---------------------------------------------------------------
    def preprocess(self, contents: Sequence[np.ndarray]) -> np.ndarray:
        """Images of one padded size -> (B, 3, Hp, Wp) float32 in [-1, 1] (reflect-padded)."""
        return im.preprocess(contents, self.stride)

    @staticmethod
    def postprocess(batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return im.postprocess(batch, sizes)

    # -- styles ----------------------------------------------------------------------------
    def encode_style(self, image, size: int | None = 256) -> StyleCode:
        """Encode a style image ((H, W, 3) uint8 array, path or encoded bytes) once.

        The shorter side is resized (bicubic) to ``size`` keeping the aspect ratio, each side
        rounded to the latent stride (``size=None`` keeps the image's scale). The result is cached
        (LRU, keyed by the pixels' hash and ``size``): a repeated style skips the style encoder.
        """
        if not isinstance(image, np.ndarray):
            image = im.load_image(image)
        image = im.check_image_array(image, "style image")
        if size is not None and (int(size) != size or size < 1):
            raise ValueError(f"style size must be a positive integer or None, got {size!r}")
        digest = hashlib.blake2b(image.data, digest_size=16)
        digest.update(repr((image.shape, size)).encode())
        key = (digest.hexdigest(), size)
        with self._lock:
            code = self._styles.get(key)
            if code is not None:
                self._styles.move_to_end(key)
                return code
        hs, ws = im.style_size(image.shape[0], image.shape[1], size, self.stride)
        x = im.preprocess([im.resize(image, hs, ws)], self.stride)
        latent, indices = self.style_latent(x)
        code = StyleCode(np.ascontiguousarray(latent), np.ascontiguousarray(indices), (hs, ws), key[0])
        with self._lock:
            self._styles[key] = code
            self._styles.move_to_end(key)
            while len(self._styles) > self.style_cache_size:
                self._styles.popitem(last=False)
        return code

    def clear_style_cache(self) -> None:
        with self._lock:
            self._styles.clear()

    # -- stylization -----------------------------------------------------------------------
    def default_batch_size(self, height: int, width: int) -> int:
        hp, wp = im.padded_size(height, width, self.stride)
        return max(1, min(self.max_batch, PIXEL_BUDGET // (hp * wp)))

    def stylize(self, contents, style, content_ratio=1.0, output_ratio=1.0, batch_size: int | None = None,
                style_size: int | None = 256):
        """Stylize one (H, W, 3) uint8 array or a list of them (mixed sizes) -> same sizes back.

        ``style``: a StyleCode, or an image (array, path, bytes) encoded at ``style_size``.
        Images are grouped by padded size; each group runs in batches of ``batch_size`` (default:
        about PIXEL_BUDGET pixels per batch, at most the model's profile max_batch).
        Raises ``ImageError`` for an unusable content image (wrong array type, smaller than one
        latent cell) before running anything.
        """
        single = isinstance(contents, np.ndarray)
        items = [contents] if single else list(contents)
        _ratio(content_ratio, "content_ratio")
        _ratio(output_ratio, "output_ratio")
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        for i, img in enumerate(items):
            what = "content image" if single else f"content image {i}"
            items[i] = im.check_image_array(img, what)
            try:
                im.check_min_size(*items[i].shape[:2], self.stride)
            except ImageError as exc:
                raise ImageError(f"{what}: {exc}") from None
        code = style if isinstance(style, StyleCode) else self.encode_style(style, size=style_size)
        results: list = [None] * len(items)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(items):
            groups.setdefault(im.padded_size(*img.shape[:2], self.stride), []).append(i)
        for (hp, wp), members in groups.items():
            step = min(int(batch_size) if batch_size else self.default_batch_size(hp, wp), self.max_batch)
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                x = self.preprocess([items[i] for i in chunk])
                y = self.run_graphs(x, code, content_ratio, output_ratio)
                for i, out in zip(chunk, self.postprocess(y, [items[i].shape[:2] for i in chunk])):
                    results[i] = out
        return results[0] if single else results
