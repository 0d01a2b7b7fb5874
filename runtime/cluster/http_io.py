"""The HTTP side of the service, free of Ray: bounded body reading, multipart/form-data parsing,
Accept negotiation, style ids and image encoding. Every refusal is an ``HTTPFailure`` with the
status code and a one-line reason."""
from __future__ import annotations

import hashlib
import io
import re

import numpy as np
from PIL import Image

from ..core import DeadlineExceeded, failure_reason
from ..errors import ImageError, ImageTooLarge
from ..images import check_min_size, load_image

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg"}
RESIZED_HEADER = "X-Quantart-Resized"
_STYLE_ID = re.compile(r"[0-9a-f]{32}")


class HTTPFailure(Exception):
    """A request refused with ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes
    (from Content-Length before reading, or while streaming a chunked body)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPFailure(413, f"request body of {int(declared)} bytes is above the limit of {limit} bytes")
        except ValueError:
            raise HTTPFailure(400, "invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPFailure(413, f"request body is above the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for part in parts[1:]:
        if "=" in part:
            key, _, val = part.partition("=")
            params[key.strip().lower()] = val.strip().strip('"')
    return parts[0].lower(), params


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """multipart/form-data -> {field name: raw bytes} (files and plain fields alike)."""
    _, params = _header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPFailure(400, "multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    fields: dict[str, bytes] = {}
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise HTTPFailure(400, "malformed multipart/form-data body")
    for piece in pieces[1:-1]:
        if not piece.startswith(b"\r\n") or not piece.endswith(b"\r\n"):
            raise HTTPFailure(400, "malformed multipart/form-data body")
        head, sep, payload = piece[2:-2].partition(b"\r\n\r\n")
        if not sep:
            raise HTTPFailure(400, "malformed multipart/form-data part (no header end)")
        name = None
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                name = _header_params(value)[1].get("name")
        if not name:
            raise HTTPFailure(400, "multipart/form-data part without a name")
        fields[name] = payload
    return fields


def negotiate(accept: str | None) -> str:
    """'png' or 'jpeg' from an Accept header (PNG unless JPEG is preferred); 406 when neither fits."""
    if not accept:
        return "png"
    best, best_q = None, 0.0
    for item in accept.split(","):
        media, params = _header_params(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        choice = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                  "image/*": "png", "*/*": "png"}.get(media)
        if choice and q > best_q:
            best, best_q = choice, q
    if best is None:
        raise HTTPFailure(406, "can answer image/png or image/jpeg only")
    return best


def parse_ratio(value, name: str) -> float:
    """A ratio parameter in [0, 1] (400 otherwise); ``None`` -> 1.0."""
    if value is None or value == b"" or value == "":
        return 1.0
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        ratio = float(value)
    except ValueError:
        raise HTTPFailure(400, f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= ratio <= 1.0:
        raise HTTPFailure(400, f"{name} must be in [0, 1], got {ratio}")
    return ratio


def parse_flag(value, name: str, default: bool) -> bool:
    """A boolean parameter (true/false, 1/0, yes/no, on/off); 400 otherwise; ``None`` -> ``default``."""
    if value is None or value in (b"", ""):
        return default
    text = (value.decode("latin-1") if isinstance(value, bytes) else str(value)).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise HTTPFailure(400, f"{name} must be true or false, got {text!r}")


def failure_for(exc: BaseException, what: str) -> HTTPFailure:
    """The HTTP answer for a per-item failure: 413 above the memory limit, 400 an unusable image or
    value, 503 out of memory, 504 a streamed image stopped at the request's time limit, else 500 (a bug,
    logged by the caller); the reason is one line."""
    if isinstance(exc, HTTPFailure):
        return exc
    if isinstance(exc, DeadlineExceeded):
        return HTTPFailure(504, f"{what}: {failure_reason(exc)}")
    if isinstance(exc, ImageTooLarge):
        return HTTPFailure(413, f"{what}: {exc}")
    if isinstance(exc, ValueError):  # ImageError is a ValueError
        return HTTPFailure(400, f"{what}: {failure_reason(exc)}")
    if isinstance(exc, MemoryError):
        return HTTPFailure(503, f"{what}: {failure_reason(exc)}")
    return HTTPFailure(500, f"{what}: {failure_reason(exc)}")


def decode_image(data: bytes, what: str, max_pixels: int, stride: int) -> np.ndarray:
    """Encoded bytes -> HWC uint8 RGB; 400 with the reason for anything unusable, including images
    above the service's pixel limit (checked from the header, before decoding)."""
    if not data:
        raise HTTPFailure(400, f"{what}: empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Exception:  # noqa: BLE001 - load_image below gives the precise reason
        width = height = 0
    if width * height > max_pixels:
        raise HTTPFailure(400, f"{what}: image is {width}x{height} = {width * height} pixels, "
                               f"above the service limit of {max_pixels}")
    try:
        image = load_image(data)
        check_min_size(image.shape[0], image.shape[1], stride)
    except ImageError as exc:
        raise HTTPFailure(400, f"{what}: {exc}") from None
    return image


def style_id_for(data: bytes, style_size: int) -> str:
    """An opaque id for a registered style: derived from its bytes, never a path."""
    return hashlib.sha256(b"%d:" % style_size + data).hexdigest()[:32]


def check_style_id(style_id: str) -> str:
    """404 for anything that cannot be an id this service issued."""
    if not _STYLE_ID.fullmatch(style_id or ""):
        raise HTTPFailure(404, "unknown style id")
    return style_id


def encode_image(array: np.ndarray, fmt: str, jpeg_quality: int = 95) -> bytes:
    """An (H, W, 3) uint8 array -> PNG (``fmt="png"``) or JPEG (``"jpeg"``) bytes."""
    buf = io.BytesIO()
    image = Image.fromarray(array, mode="RGB")
    if fmt == "jpeg":
        image.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()
