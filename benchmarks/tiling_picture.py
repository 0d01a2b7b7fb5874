"""The README picture: one image stylized untiled, with diffusers-style naive tiles, and with the exact
streaming executor, side by side (the naive panel's seams visible).

    python -m quantart_benchmarks.tiling_picture --model DIR [--content assets/content/1.jpg]
        [--style assets/style/1.jpg] [--size 768] [--tile 256] [--out docs/images/tiling_comparison.jpg]

"ours" calls ``Stylizer.stylize(..., streaming="always")``; where this build's Stylizer has no streaming
executor the panel says so and the picture has the two other panels (the JSON beside the PNG records
which). Each panel's caption gives its PSNR and max |Δ| against the untiled result; yellow ticks on the
naive panel's bottom and right borders mark where its tiles meet.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import numpy as np

from quantart_runtime.util import atomic_open
from quantart_runtime.util.atomic import write_text

from .naive_tiling import fidelity, naive_tiled_stylize, tile_geometry
from .samples import ASSETS, REPO_ROOT


def streaming_supported(stylizer) -> tuple[bool, str]:
    """Whether ``stylizer.stylize`` takes ``streaming=`` (the exact streaming executor is in this build)."""
    try:
        params = inspect.signature(stylizer.stylize).parameters
    except (TypeError, ValueError):
        return False, "Stylizer.stylize has no inspectable signature"
    if "streaming" in params:
        return True, ""
    return False, "this build's Stylizer.stylize has no streaming= option (the streaming executor is not merged)"


def _shown(path) -> str:
    """``path`` relative to the repository where it lies inside it, else as given resolved."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def stylize_streaming(stylizer, content: np.ndarray, code) -> np.ndarray:
    """The exact streaming executor, forced (``streaming="always"``)."""
    return stylizer.stylize(content, code, streaming="always")


def _caption(draw, font, xy, text: str) -> None:
    draw.rectangle([xy[0], xy[1], xy[0] + 8 * len(text) + 10, xy[1] + 20], fill=(255, 255, 255))
    draw.text((xy[0] + 5, xy[1] + 4), text, fill=(0, 0, 0), font=font)


def compose(panels: list[tuple[str, np.ndarray]], grid: list[int] | None = None, grid_panel: int = -1):
    """A PIL image of ``panels`` ((caption, (H, W, 3) uint8)) side by side; ``grid``: tile-crop lines (px)
    drawn on panel ``grid_panel``."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = panels[0][1].shape[:2]
    gap = 8
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for k, (caption, img) in enumerate(panels):
        x0 = k * (w + gap)
        canvas.paste(Image.fromarray(img), (x0, 0))
        if grid and k == grid_panel:   # ticks on the borders where tiles meet (the seams stay unmarked)
            for g in grid:
                draw.polygon([(x0 + g - 6, h), (x0 + g + 6, h), (x0 + g, h - 12)], fill=(255, 220, 0))
                draw.polygon([(x0 + w, g - 6), (x0 + w, g + 6), (x0 + w - 12, g)], fill=(255, 220, 0))
        _caption(draw, font, (x0 + 6, 6), caption)
    return canvas


def make_picture(model_dir, content_path, style_path, size: int, tile: int, out: Path, style_size: int = 256,
                 backend: str = "onnxruntime") -> dict:
    """Stylize ``content_path`` (resized to ``size``², centre-cropped) with ``style_path`` the three ways;
    write the picture to ``out`` (JPEG/PNG by suffix) and ``out``.json; returns the record."""
    from quantart_runtime import Stylizer, load_image
    from quantart_runtime import images as im

    from .samples import photo

    content = photo(Path(content_path), size, size)
    record = {"model": _shown(model_dir), "content": _shown(content_path), "style": _shown(style_path), "size": size,
              "tile": tile, "panels": {}}
    with Stylizer.load(model_dir, backend=backend) as st:
        code = st.encode_style(load_image(style_path), size=style_size)
        untiled = st.stylize(content, code)
        g = tile_geometry(tile, st.stride)
        naive = naive_tiled_stylize(st, content, code, tile)
        f_naive = fidelity(naive, untiled)
        panels = [("untiled", untiled),
                  (f"naive tiles ({tile}px, diffusers): {f_naive['psnr_db']:.1f} dB, max|d| {f_naive['max_abs']}",
                   naive)]
        record["panels"]["naive"] = f_naive
        ok, reason = streaming_supported(st)
        if ok:
            ours = stylize_streaming(st, content, code)
            f_ours = fidelity(ours, untiled)
            panels.append((f"ours, streamed: {f_ours['psnr_db']:.1f} dB, max|d| {f_ours['max_abs']}", ours))
            record["panels"]["ours"] = f_ours
        else:
            record["panels"]["ours"] = {"unavailable": reason}
        step = g["step_latent"] * st.stride
        grid = list(range(step, im.padded_size(size, size, st.stride)[0], step))
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {"format": "JPEG", "quality": 92} if out.suffix.lower() in (".jpg", ".jpeg") else {"format": "PNG"}
    with atomic_open(out) as f:
        compose(panels, grid, grid_panel=1).save(f, **options)
    write_text(out.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
    return record


def main(argv=None) -> int:
    """The command line (module docstring); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--content", default=str(ASSETS / "content" / "1.jpg"))
    ap.add_argument("--style", default=str(ASSETS / "style" / "1.jpg"))
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--style-size", type=int, default=256)
    ap.add_argument("--out", default="docs/images/tiling_comparison.jpg")
    args = ap.parse_args(argv)
    rec = make_picture(args.model, args.content, args.style, args.size, args.tile, Path(args.out), args.style_size)
    print(json.dumps(rec["panels"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
