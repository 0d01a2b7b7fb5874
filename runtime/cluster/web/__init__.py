"""The browser page of ``quantart serve`` (``GET /``): static HTML, CSS and plain JavaScript shipped in
this package (no build step, nothing from a CDN). The page talks only to the public API
(``/v1/health``, ``/v1/styles``, ``/v1/stylize``), so it gets the same limits and refusals as any client.
``samples`` loads the sample styles that ``--sample-styles`` registers at start.
"""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
# The sample artworks, shipped in the package (package data: any install has them; the same files as the
# repository's assets/style, credits in sample_styles/ATTRIBUTION.md); `--sample-styles DIR` points elsewhere.
SAMPLE_STYLES = HERE / "sample_styles"
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}


def page_file(name: str) -> tuple[bytes, str] | None:
    """(bytes, media type) of one of the page's files, or None for any other name (never a path)."""
    media_type = PAGE_FILES.get(name)
    if media_type is None:
        return None
    return (HERE / name).read_bytes(), media_type
