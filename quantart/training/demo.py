"""`quantart demo`: train a tiny Stage 1 and Stage 2 on the sample images (CPU, a few minutes),
stylize every sample content image with every sample style, and write a grid (content | style | result).

Results of a few-minute CPU model are crude; they show that the whole pipeline works. For real
results, load the official QuantArt checkpoints (`quantart.load_model(path)`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

ASSETS = Path(__file__).resolve().parents[2] / "assets"


def _images(folder: Path, size: int):
    from ..data import ImageFolderDataset

    ds = ImageFolderDataset(folder, size, random_crop=False)
    return [ds[i]["image"] for i in range(len(ds))]


def run_demo(out, content=None, style=None, stage1_steps: int = 300, stage2_steps: int = 150, size: int = 32,
             result_size: int = 128, seed: int = 0, progress: bool = True) -> dict:
    """Train both tiny stages and write the grid; returns the paths it wrote."""
    import torch

    from .config import apply_overrides, preset
    from .grid import save_grid
    from .runner import fit

    out = Path(out)
    content = Path(content) if content else ASSETS / "content"
    style = Path(style) if style else ASSETS / "style"
    common = dict(out=None, size=size, seed=seed, image_every=0, num_workers=0, accelerator="cpu", devices=1)
    s1 = apply_overrides(preset("stage1", "tiny"), data={"train": {"target": "ImageFolderDataset", "params": {
        "root": str(content.parent) if content.parent == style.parent else str(content)}}},
        **{**common, "out": str(out / "stage1"), "max_steps": stage1_steps, "every_n_steps": stage1_steps})
    if content.parent != style.parent:  # one shared VQGAN for content and art: train on both folders
        s1["data"] = {"folder": str(content)}
    r1 = fit(s1, progress_bar=progress)
    s2 = apply_overrides(preset("stage2", "tiny"), data={"content": str(content), "style": str(style)},
                         model={"checkpoint_encoder": str(r1.model_dir), "checkpoint_decoder": str(r1.model_dir)},
                         **{**common, "out": str(out / "stage2"), "max_steps": stage2_steps,
                            "every_n_steps": stage2_steps})
    r2 = fit(s2, progress_bar=progress)
    model = r2.module.model.eval()
    contents, styles = _images(content, result_size), _images(style, result_size)
    rows = []
    with torch.no_grad():
        for c in contents:
            for s in styles:
                rows.append([c, s, model.stylize(c[None], s[None])[0]])
    grid = save_grid(rows, out / "grid.png")
    return {"grid": grid, "stage1_model": r1.model_dir, "stage2_model": r2.model_dir,
            "stage2_checkpoint": r2.last_checkpoint}


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="outputs/demo", show_default=True)
@click.option("--content", type=click.Path(file_okay=False), help="Content images (default: the sample images).")
@click.option("--style", type=click.Path(file_okay=False), help="Style images (default: the sample images).")
@click.option("--stage1-steps", type=int, default=300, show_default=True)
@click.option("--stage2-steps", type=int, default=150, show_default=True)
@click.option("--size", type=int, default=32, show_default=True, help="Training crop size.")
@click.option("--result-size", type=int, default=128, show_default=True, help="Size of the stylized images.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out, content, style, stage1_steps, stage2_steps, size, result_size, seed):
    """Train a tiny model on the sample images (CPU, a few minutes) and stylize them.

    The results of a few-minute CPU model are crude. For real results use the official checkpoints:
    quantart.load_model("landscape2art.ckpt").stylize(content, style).
    """
    from ..data import DataError
    from .config import ConfigError

    if not content and not (ASSETS / "content").is_dir():
        raise click.ClickException(f"no sample images at {ASSETS}; pass --content DIR --style DIR")
    start = time.time()
    try:
        paths = run_demo(out, content, style, stage1_steps, stage2_steps, size, result_size, seed)
    except (ConfigError, DataError, ValueError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"demo finished in {time.time() - start:.0f} s (a tiny CPU model: crude results)")
    click.echo(f"grid (content | style | result): {paths['grid']}")
    click.echo(f"stage 1 model: {paths['stage1_model']}")
    click.echo(f"stage 2 checkpoint: {paths['stage2_checkpoint']}")
    click.echo(f"stage 2 model: {paths['stage2_model']}")
