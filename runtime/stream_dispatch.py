"""When the Stylizer streams, and the streamed requests themselves (the dispatch ``Stylizer`` calls).

A content image is streamed (``quantart_runtime.streaming``) when ``streaming="always"``, or with
``"auto"`` when its untiled request does not fit: the memory budget (``memory.SizePolicy``) or, on
TensorRT, the engine profile's ``max_res``. ``"never"`` keeps the untiled path (and its refusal). The
same rule holds for style images (the style encoder alone). Streaming needs an export with a
``streaming`` schedule; older exports keep the untiled behaviour.
"""
from __future__ import annotations

import numpy as np

from . import images as im
from .errors import ImageTooLarge
from .streaming import RunInfo, StreamingExecutor

STREAMING_MODES = ("auto", "always", "never")


def ratio_input(value, name: str) -> np.ndarray:
    """A ``content_ratio`` / ``output_ratio`` graph input: (1,) float32 in [0, 1], else ``ValueError``."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return np.array([value], dtype=np.float32)


def check_mode(streaming: str) -> str:
    """``streaming`` if it is one of STREAMING_MODES, else ``ValueError``."""
    if streaming not in STREAMING_MODES:
        raise ValueError(f"streaming must be one of {', '.join(STREAMING_MODES)}, got {streaming!r}")
    return streaming


def can_stream(stylizer) -> bool:
    """True when the model's export has a streaming schedule."""
    return isinstance(stylizer.manifest.get("streaming"), dict)


def executor(stylizer) -> StreamingExecutor:
    """The stylizer's streaming executor (created on first use; its runner too)."""
    with stylizer._lock:
        if stylizer._streaming is None:
            stylizer._streaming = StreamingExecutor(stylizer.runner, stylizer.manifest)
        return stylizer._streaming


def _beyond_profile(stylizer, hp: int, wp: int) -> bool:
    return stylizer.backend == "tensorrt" and bool(stylizer.max_res) and max(hp, wp) > int(stylizer.max_res)


def content_streams(stylizer, height: int, width: int, style_tokens: int, streaming: str) -> bool:
    """Whether a content of this size runs streamed under ``streaming``."""
    if streaming == "never" or not can_stream(stylizer):
        return False
    if streaming == "always":
        return True
    hp, wp = im.padded_size(height, width, stylizer.stride)
    return not stylizer.size_policy.fits(height, width, 1, style_tokens) or _beyond_profile(stylizer, hp, wp)


def style_streams(stylizer, height: int, width: int, streaming: str = "auto") -> bool:
    """Whether a style encoding of this (stride-multiple) size runs streamed."""
    if streaming == "never" or not can_stream(stylizer):
        return False
    fits = stylizer.size_policy.fit_style(height, width) == (height, width)
    return streaming == "always" or not fits or _beyond_profile(stylizer, height, width)


def plan_content(stylizer, height: int, width: int, code):
    """The streaming plan of one content (raises ``ImageTooLarge`` in one line when it cannot fit)."""
    from .streaming import streaming_peak

    style_hw = tuple(int(d) * stylizer.stride for d in code.latent.shape[2:])
    return streaming_peak(executor(stylizer), height, width, style_hw, stylizer.size_policy.budget)


def stylize_one(stylizer, image: np.ndarray, code, content_ratio, output_ratio, progress=None,
                tile=None) -> tuple[np.ndarray, RunInfo]:
    """One (H, W, 3) uint8 content, streamed -> ((H, W, 3) uint8, RunInfo)."""
    x = im.preprocess([image], stylizer.stride)
    y, info = executor(stylizer).stylize(x, code.latent, ratio_input(content_ratio, "content_ratio"),
                                         ratio_input(output_ratio, "output_ratio"), stylizer.size_policy.budget,
                                         tile=tile, progress=progress)
    stylizer.graph_calls["streaming"] += info.graph_calls
    return im.postprocess(y, [image.shape[:2]])[0], info


def encode_style(stylizer, x: np.ndarray, progress=None) -> tuple[np.ndarray, np.ndarray, RunInfo]:
    """A preprocessed (1, 3, Hs, Ws) style image, streamed -> (latent, indices, RunInfo)."""
    (latent, indices), info = executor(stylizer).encode_style(x, stylizer.size_policy.budget, progress=progress)
    stylizer.graph_calls["streaming"] += info.graph_calls
    return latent, indices, info


def too_large(what: str, height: int, width: int, stylizer, style_tokens: int) -> ImageTooLarge:
    """The untiled refusal (``streaming="never"`` or an export without a schedule)."""
    policy = stylizer.size_policy
    hint = "" if can_stream(stylizer) else "; re-export the model to stream larger images"
    return ImageTooLarge(f"{what}: {width}x{height} needs more than the memory budget of "
                         f"{policy.budget / 2**30:.2f} GiB untiled (largest side for this model: "
                         f"{policy.max_side(1, style_tokens)} px){hint}")
