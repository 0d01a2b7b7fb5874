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
from . import stream_dispatch as dispatch
from .backends import choose_backend, select_backend
from .errors import ImageError, ImageTooLarge, ModelError
from .manifest import load_manifest
from .memory import Geometry, SizePolicy, resolve_budget
from .streaming import RunInfo

PIXEL_BUDGET = 1024 * 1024   # default batch: about this many padded pixels per graph call
STYLE_CACHE_SIZE = 32
DEVICE_VALUE_CACHE = 8     # (style, batch) and ratio values kept on the device


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


_ratio = dispatch.ratio_input   # one check of the ratio inputs, untiled and streamed


class Stylizer:
    """Stylizes images with an exported QuantArt Stage 2 model, without torch.

    Build it with :meth:`Stylizer.load` (validates the model directory and starts a backend);
    encode a style once with :meth:`encode_style` and stylize any number of content images with
    :meth:`stylize`. Thread-safe for concurrent ``stylize`` calls on backends whose sessions are.
    ``backend`` / ``precision`` name what runs; ``graph_calls`` counts runner calls per graph.

    Args:
        runner: an activated :class:`quantart_runtime.backends.Runner`.
        manifest: the model's parsed ``manifest.json`` (must be a Stage 2 export).
        style_cache_size: how many encoded styles the LRU cache keeps.
    Raises:
        ModelError: the export is not a Stage 2 model.
    """

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
        # the one size policy (quantart_runtime.memory); attention is linear-memory on fused-attention runners
        geometry = Geometry.from_manifest(manifest).with_fused_attention(getattr(runner, "linear_attention", False))
        self.size_policy = SizePolicy(geometry, resolve_budget())
        self.graph_calls: Counter = Counter()
        self.precision = getattr(runner, "precision", "fp32")   # what runs (load() may say a plan)
        self.reason = ""                                          # why load() chose this backend
        self.style_cache_size = style_cache_size
        self._styles: OrderedDict[tuple, StyleCode] = OrderedDict()
        self._device_values: OrderedDict = OrderedDict()   # device_style / device_ratio uploads
        self._lock = threading.Lock()
        self._streaming = None                # the streaming executor (stream_dispatch), made on first use
        self.last_run = RunInfo()             # what the last stylize / encode_style did (streamed, tiles, disk)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir, backend: str = "auto", device: int = 0, providers=None,
             precision: str | None = None, verify: bool = True, style_cache_size: int = STYLE_CACHE_SIZE,
             **options) -> "Stylizer":
        """Validate ``model_dir`` (manifest format, graph files, sha256) and start ``backend``.

        backend: "auto" (TensorRT > ONNX Runtime CUDA; on a CPU the faster, measured on first use, of
        ONNX Runtime FP32 and OpenVINO with this model's verified plan; see ``backends.choose_backend``), "onnxruntime",
        "tensorrt" or "openvino". precision: None (auto: fp32, or the verified OpenVINO plan),
        "fp32", "fp16", "bf16" or "int8" (OpenVINO; int8: the graphs with export-verified INT8 IR).
        ``providers`` (ONNX Runtime) and other ``options`` go to the Runner. ``stylizer.backend`` /
        ``precision`` / ``reason`` say what was chosen and why.
        Raises ``ModelError`` (``BackendError`` for backend problems) with a one-line reason.
        """
        manifest = load_manifest(model_dir, precision=precision if precision in ("fp32", "fp16") else "fp32",
                                 verify=verify)
        if manifest["kind"] != "stage2":
            raise ModelError(f"model {model_dir}: a {manifest['kind']} export has no style transfer "
                             f"graphs; stylization needs a Stage 2 model")
        if providers is not None:
            options["providers"] = providers
        choice = choose_backend(model_dir, backend, precision, device, **options)
        runner_cls = select_backend(choice.backend)
        runner = runner_cls(Path(model_dir), manifest, precision=choice.graph_precision, device=device,
                            **choice.options)
        runner.activate()
        stylizer = cls(runner, manifest, style_cache_size=style_cache_size)
        stylizer.precision, stylizer.reason = choice.precision, choice.reason
        return stylizer

    def close(self) -> None:
        """Free the runner's sessions / engines and the values kept on the device."""
        with self._lock:
            self._device_values.clear()
            streaming, self._streaming = self._streaming, None
        if streaming is not None:
            streaming.close()
        self.runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def backend(self) -> str:
        """The name of the backend that runs the graphs (e.g. ``"onnxruntime"``)."""
        return self.runner.name

    # -- the graphs, one call each ---------------------------------------------------------
    def _infer(self, graph: str, feeds: dict, host_outputs: bool = True) -> dict:
        self.graph_calls[graph] += 1
        return self.runner.infer(graph, feeds, host_outputs=host_outputs)

    def device_style(self, style: StyleCode, batch: int):
        """The style latent as the runner's native value, broadcast to ``batch`` on the device.

        Uploaded once per style (one H2D copy) and broadcast there (``Runner.broadcast``); the last
        few (style, batch) values are kept, so a run of batches reuses them without any copy.
        """
        with self._lock:
            for key in ((style, batch), (style, 1)):
                if key in self._device_values:
                    self._device_values.move_to_end(key)
            value = self._cached((style, batch))
            if value is not None:
                return value
            one = self._cached((style, 1))
            if one is None:
                one = self._device_values[(style, 1)] = self.runner.to_device(style.latent)
            value = one if batch == 1 else self.runner.broadcast(one, batch)
            self._device_values[(style, batch)] = value
            while len(self._device_values) > DEVICE_VALUE_CACHE:
                self._device_values.popitem(last=False)
            return value

    def device_ratio(self, value, name: str):
        """A ratio input (1,) float32 as the runner's native value, uploaded once per value."""
        host = _ratio(value, name)
        key = ("ratio", float(host[0]))
        with self._lock:
            dev = self._cached(key)
            if dev is None:
                dev = self._device_values[key] = self.runner.to_device(host)
            self._device_values.move_to_end(key)
            while len(self._device_values) > DEVICE_VALUE_CACHE:
                self._device_values.popitem(last=False)
            return dev

    def _cached(self, key):
        """A kept device value, or None once its memory is gone (the runner was deactivated and
        freed it: ``DeviceArray.alive``)."""
        value = self._device_values.get(key)
        if value is not None and getattr(value, "alive", True) is False:
            del self._device_values[key]
            return None
        return value

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
        """Preprocessed batch -> decoded batch: content_encoder -> sga -> decoder (no pre/post).

        The device data path: ``x`` is the one upload of the batch, the latents stay the runner's
        native values (on the GPU: device memory) from graph to graph, the style code and the
        ratios are uploaded once and reused (``device_style``, ``device_ratio``), and the decoded
        batch is the one download.
        """
        h = self._infer("content_encoder", {"image": x}, host_outputs=False)["content_latent"]
        y = self._infer("sga", {"content_latent": h, "style_latent": self.device_style(style, x.shape[0]),
                                "content_ratio": self.device_ratio(content_ratio, "content_ratio"),
                                "output_ratio": self.device_ratio(output_ratio, "output_ratio")},
                        host_outputs=False)["stylized_latent"]
        return self._infer("decoder", {"latent": y})["image"]

    # -- pre/post-processing ---------------------------------------------------------------
    def preprocess(self, contents: Sequence[np.ndarray]) -> np.ndarray:
        """Images of one padded size -> (B, 3, Hp, Wp) float32 in [-1, 1] (reflect-padded)."""
        return im.preprocess(contents, self.stride)

    def _staged(self, contents: Sequence[np.ndarray], slot: int) -> np.ndarray:
        """``preprocess`` into the runner's staging array of ``slot`` (pinned memory on GPU runners,
        so the batch's one upload is an asynchronous DMA); a plain array elsewhere."""
        x = self.preprocess(contents)
        if not getattr(self.runner, "pinned_staging", False):
            return x
        buf = self.runner.staging(x.shape, x.dtype, slot)
        buf[...] = x
        return buf

    def _prefetched(self, chunks: list, items: list):
        """Yield (chunk, preprocessed batch), preprocessing batch n+1 in a worker thread while the
        caller runs batch n (two staging slots alternate)."""
        if len(chunks) <= 1:
            for n, chunk in enumerate(chunks):
                yield chunk, self._staged([items[i] for i in chunk], n % 2)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantart-preprocess") as pool:
            pending = pool.submit(self._staged, [items[i] for i in chunks[0]], 0)
            for n, chunk in enumerate(chunks):
                x = pending.result()
                if n + 1 < len(chunks):
                    pending = pool.submit(self._staged, [items[i] for i in chunks[n + 1]], (n + 1) % 2)
                yield chunk, x

    @staticmethod
    def postprocess(batch: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Decoded (B, 3, Hp, Wp) float batch -> list of (H, W, 3) uint8 images cropped to ``sizes``."""
        return im.postprocess(batch, sizes)

    # -- styles ----------------------------------------------------------------------------
    def encode_style(self, image, size: int | None = 256, streaming: str = "auto", progress=None) -> StyleCode:
        """Encode a style image ((H, W, 3) uint8 array, path or encoded bytes) once.

        ``streaming`` / ``progress``: as :meth:`stylize` (a style the untiled encoder cannot hold streams).

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
        hs, ws = im.style_size(image.shape[0], image.shape[1], size, self.stride,
                               max_side=None if size is None else im.STYLE_MAX_ASPECT * int(size))
        hs, ws = max(self.stride, hs // self.stride * self.stride), max(self.stride, ws // self.stride * self.stride)
        if not dispatch.style_streams(self, hs, ws, dispatch.check_mode(streaming)):
            hs, ws = self.size_policy.fit_style(hs, ws)   # untiled: the style encoder's memory, too
            hs, ws = (max(self.stride, hs // self.stride * self.stride),
                      max(self.stride, ws // self.stride * self.stride))
        streamed = None
        if dispatch.style_streams(self, hs, ws, streaming):
            try:
                streamed = dispatch.encode_style(self, im.preprocess([im.resize(image, hs, ws)], self.stride),
                                                 progress)
            except ImageTooLarge:
                if streaming == "always":
                    raise
                # auto: not even streamed within the budget -> the style is downscaled to fit, as untiled
                hs, ws = self.size_policy.fit_style(hs, ws)
                hs, ws = (max(self.stride, hs // self.stride * self.stride),
                          max(self.stride, ws // self.stride * self.stride))
        if streamed is not None:
            latent, indices, self.last_run = streamed
        else:
            latent, indices = self.style_latent(im.preprocess([im.resize(image, hs, ws)], self.stride))
            self.last_run = RunInfo()
        code = StyleCode(np.ascontiguousarray(latent), np.ascontiguousarray(indices), (hs, ws), key[0])
        with self._lock:
            self._styles[key] = code
            self._styles.move_to_end(key)
            while len(self._styles) > self.style_cache_size:
                self._styles.popitem(last=False)
        return code

    def clear_style_cache(self) -> None:
        """Forget every encoded style (and the copies of styles kept on the device)."""
        with self._lock:
            self._styles.clear()
            self._device_values.clear()

    # -- stylization -----------------------------------------------------------------------
    def set_memory_budget(self, budget) -> None:
        """Set the memory budget of requests (bytes, "6G", or a fraction "0.3" of the available
        memory; ``None``: the default, see ``quantart_runtime.memory.resolve_budget``)."""
        self.size_policy = SizePolicy(self.size_policy.geometry, resolve_budget(budget))

    def default_batch_size(self, height: int, width: int) -> int:
        """Images of this size per graph call: about PIXEL_BUDGET pixels, at most the profile's
        max_batch and what the memory budget (``size_policy``) holds; at least 1."""
        hp, wp = im.padded_size(height, width, self.stride)
        return max(1, min(self.max_batch, PIXEL_BUDGET // (hp * wp),
                          self.size_policy.max_batch(hp, wp)))

    def stylize(self, contents, style, content_ratio=1.0, output_ratio=1.0, batch_size: int | None = None,
                style_size: int | None = 256, streaming: str = "auto", progress=None):
        """Stylize one (H, W, 3) uint8 array or a list of them (mixed sizes) -> same sizes back.

        ``style``: a StyleCode, or an image (array, path, bytes) encoded at ``style_size``.
        Images are grouped by padded size; each group runs in batches of ``batch_size`` (default:
        about PIXEL_BUDGET pixels per batch, at most the model's profile max_batch).
        ``streaming``: "auto" streams each content whose untiled request exceeds the memory budget (or
        the TensorRT profile) through the exact tiled executor (``quantart_runtime.streaming``),
        "always" streams every content, "never" refuses what does not fit untiled. ``progress``: a
        callable ``(tiles done, tiles total)`` called as a streamed image runs. ``last_run`` then says
        what ran (``streamed``, ``tiles``, ``peak_disk_bytes``, ...).
        Raises ``ImageError`` for an unusable content image (wrong array type, smaller than one
        latent cell) and ``ImageTooLarge`` for one that cannot fit even streamed, before running anything.
        """
        dispatch.check_mode(streaming)
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
        style_tokens = int(np.prod(code.latent.shape[2:]))
        streamed = []
        for i, img in enumerate(items):   # never an allocation the memory budget cannot hold
            what = "content image" if single else f"content image {i}"
            if dispatch.content_streams(self, *img.shape[:2], style_tokens, streaming):
                streamed.append(i)
                try:
                    dispatch.plan_content(self, *img.shape[:2], code)   # refused here, before any work
                except ImageTooLarge as exc:
                    raise ImageTooLarge(f"{what}: {exc}") from None
            elif not self.size_policy.fits(*img.shape[:2], 1, style_tokens):
                raise dispatch.too_large(what, *img.shape[:2], self, style_tokens)
        results: list = [None] * len(items)
        run = RunInfo()
        for i in streamed:
            results[i], info = dispatch.stylize_one(self, items[i], code, content_ratio, output_ratio, progress)
            run = RunInfo(True, run.tiles + info.tiles, max(run.peak_disk_bytes, info.peak_disk_bytes),
                          max(run.peak_store_bytes, info.peak_store_bytes),
                          max(run.predicted_peak_bytes, info.predicted_peak_bytes),
                          max(run.predicted_disk_bytes, info.predicted_disk_bytes), run.seconds + info.seconds,
                          run.graph_calls + info.graph_calls)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(items):
            if i not in streamed:
                groups.setdefault(im.padded_size(*img.shape[:2], self.stride), []).append(i)
        if groups and self._streaming is not None:   # the streamed runs' kept buffers stay while they fit too
            need = max(self.size_policy.geometry.peak_bytes(hp, wp, 1, style_tokens) for hp, wp in groups)
            batched = any(len(m) > 1 for m in groups.values())   # a batch is sized to the whole budget
            if batched or need + self._streaming.pool.held_bytes > self.size_policy.budget:
                self._streaming.release_buffers()
        for (hp, wp), members in groups.items():
            step = min(int(batch_size) if batch_size else self.default_batch_size(hp, wp), self.max_batch,
                       max(1, self.size_policy.max_batch(hp, wp, style_tokens)))
            chunks = [members[start:start + step] for start in range(0, len(members), step)]
            for chunk, x in self._prefetched(chunks, items):
                y = self.run_graphs(x, code, content_ratio, output_ratio)
                for i, out in zip(chunk, self.postprocess(y, [items[i].shape[:2] for i in chunk])):
                    results[i] = out
        self.last_run = run
        return results[0] if single else results
