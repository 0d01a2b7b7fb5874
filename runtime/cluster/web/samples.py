"""Sample styles registered when the service starts (``quantart serve --sample-styles``): read and
checked once in the driver, then pinned in the style registry and listed by ``GET /v1/styles``."""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ...errors import ImageError
from ...images import load_image
from ..http_io import style_id_for

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
THUMBNAIL_SIDE = 128
MAX_SAMPLES = 64


@dataclass(frozen=True)
class SampleStyle:
    """One sample style: its display ``name``, the id ``POST /v1/styles`` would give its bytes, the
    encoded image ``data`` and a small JPEG ``thumbnail`` as a data: URL."""

    name: str
    style_id: str
    data: bytes
    thumbnail: str

    def listing(self) -> dict:
        """The entry of ``GET /v1/styles`` (no image bytes)."""
        return {"style_id": self.style_id, "name": self.name, "thumbnail": self.thumbnail}


def _thumbnail(image) -> str:
    picture = Image.fromarray(image, "RGB")
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def load_sample_styles(folder, style_size: int, max_pixels: int) -> list[SampleStyle]:
    """Every image in ``folder`` (sorted by name, at most ``MAX_SAMPLES``) as a SampleStyle.

    Raises ``ValueError`` with a one-line reason when the folder is missing or holds no image, and
    ``ImageError`` naming the file when one is not a usable image or has more than ``max_pixels``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"sample styles: {folder} is not a folder (give a folder of style images)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"sample styles: no images ({', '.join(EXTENSIONS)}) in {folder}")
    if len(paths) > MAX_SAMPLES:
        raise ValueError(f"sample styles: {len(paths)} images in {folder}, at most {MAX_SAMPLES}")
    samples = []
    for path in paths:
        data = path.read_bytes()
        try:
            image = load_image(data)
        except ImageError as exc:
            raise ImageError(f"sample style {path}: {exc}") from None
        if image.shape[0] * image.shape[1] > max_pixels:
            raise ImageError(f"sample style {path}: more than the service limit of {max_pixels} pixels")
        name = path.stem.replace("_", " ").replace("-", " ")
        name = f"sample {name}" if name.isdigit() else name
        samples.append(SampleStyle(name, style_id_for(data, style_size), data, _thumbnail(image)))
    return samples
