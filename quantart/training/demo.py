"""`quantart demo`: the whole pipeline on the sample images, ending with measured results.

Default (the shipped weights, a few minutes on a CPU): the demo model in assets/demo_model (trained by
`quantart train` with configs/demo_vqgan.yaml, configs/demo_vqgan_refine.yaml (the two Stage 1 phases) and
configs/demo_stage2.yaml; assets/demo_model/TRAINING.md
records the exact commands) → ONNX export (verified against PyTorch) → every content × style pair stylized
through the torch-free runtime → per-pair metrics (quantart_runtime.quality: structure SSIM and palette gain)
and grids. `--from-scratch` first trains Stage 1 and Stage 2 with the same configs (a long CPU job).

Writes under OUT: onnx/ (the exported model), stylized/<style>/<content>.png, grid.png (one row per pair:
content | style | result), grid_matrix.png (contents down, styles across), metrics.md and metrics.json,
and with --from-scratch train/stage1 and train/stage2 (run folders).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
DEMO_MODEL = ASSETS / "demo_model"
STAGE1_CONFIG = ROOT / "configs" / "demo_vqgan.yaml"
REFINE_CONFIG = ROOT / "configs" / "demo_vqgan_refine.yaml"
FINAL_CONFIG = ROOT / "configs" / "demo_vqgan_final.yaml"
ART_CONFIG = ROOT / "configs" / "demo_vqgan_art.yaml"
STAGE2_CONFIG = ROOT / "configs" / "demo_stage2.yaml"
SIZE = 128                    # the demo stylizes (and measures) at 128 × 128
CONTENT_RATIO = 1.0           # discrete–continuous fusion knobs of the demo (see README, "Demo")
OUTPUT_RATIO = 1.0
STAGE1_STEPS = (1000, 400, 200, 100, 100)  # training lengths of the shipped weights (assets/demo_model/TRAINING.md)
STAGE2_STEPS = 400
RESTART_CODES = 50            # --restart-dead-codes of every Stage 1 run
LOWLR_BASE_LR = 2.5e-5        # the "lowlr" run: configs/demo_vqgan_refine.yaml at a quarter of its learning rate
TARGETS = {"structure_ssim": 0.35, "palette_gain": 0.35}  # issue 15


def _with_root(spec: dict) -> dict:
    """The config's data.params.train with its folders (root, content_root, style_root) made absolute: the
    YAMLs name folders relative to the repository root."""
    train = dict(spec["data"]["train"])
    params = dict(train.get("params") or {})
    for key in ("root", "content_root", "style_root"):
        if key in params:
            params[key] = str(ROOT / params[key])
    train["params"] = params
    return {"train": train}


# The Stage 1 runs of the demo, in order (assets/demo_model/TRAINING.md): name, config, flag overrides.
# Each run after the first starts from the previous run's weights (the official ckpt_path); "final" is the
# content VQGAN and "art" (refined on the artworks only) the art VQGAN of Stage 2.
STAGE1_RUNS = (("stage1", STAGE1_CONFIG, {}), ("refine", REFINE_CONFIG, {}),
               ("lowlr", REFINE_CONFIG, {"base_lr": LOWLR_BASE_LR}), ("final", FINAL_CONFIG, {}),
               ("art", ART_CONFIG, {}))


def parse_steps(text: str) -> tuple[int, ...]:
    """``--stage1-steps`` "N1,N2,N3,N4,N5" (one positive count per Stage 1 run) → a tuple; ValueError otherwise."""
    try:
        steps = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        steps = ()
    if len(steps) != len(STAGE1_RUNS) or min(steps) < 1:
        raise ValueError(f"--stage1-steps needs {len(STAGE1_RUNS)} positive step counts "
                         f"({', '.join(r[0] for r in STAGE1_RUNS)}), got {text!r}")
    return steps


def train_demo_model(out, stage1_steps=STAGE1_STEPS, stage2_steps: int = STAGE2_STEPS, progress: bool = True) -> Path:
    """Train the Stage 1 runs (STAGE1_RUNS, `stage1_steps` steps each) then Stage 2 on the sample images with
    the demo configs; returns the Stage 2 model dir.

    The same as the commands recorded in assets/demo_model/TRAINING.md, with the run folders under `out`.
    Raises ConfigError / DataError on bad configs or data.
    """
    from .config import apply_overrides, from_yaml
    from .runner import fit

    out, ckpt, ckpts = Path(out), None, {}
    for (name, config, flags), steps in zip(STAGE1_RUNS, stage1_steps):
        spec = from_yaml("stage1", config)
        spec = apply_overrides(spec, data=_with_root(spec), model={"ckpt_path": ckpt} if ckpt else None,
                               out=str(out / name), accelerator="cpu", max_steps=steps,
                               every_n_steps=max(1, min(500, steps)), image_every=0, restart_codes=RESTART_CODES,
                               **flags)
        ckpt = ckpts[name] = str(fit(spec, progress_bar=progress).last_checkpoint)
    s2 = from_yaml("stage2", STAGE2_CONFIG)
    s2 = apply_overrides(s2, data=_with_root(s2),
                         model={"checkpoint_encoder": ckpts["final"], "checkpoint_decoder": ckpts["art"]},
                         out=str(out / "stage2"), accelerator="cpu", max_steps=stage2_steps,
                         every_n_steps=max(1, min(500, stage2_steps)), image_every=0)
    return fit(s2, progress_bar=progress).model_dir


def pack_model(model_dir, out_dir) -> Path:
    """Copy a saved model (config.json + model.safetensors) to `out_dir` with its float32 weights stored as
    float16 (half the size; `quantart.load_model` casts them back to float32 on loading). Atomic; returns
    out_dir. Raises CheckpointError for a directory without those files.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from quantart_runtime.util import atomic_dir

    from ..checkpoint import CheckpointError

    model_dir = Path(model_dir)
    config, weights = model_dir / "config.json", model_dir / "model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise CheckpointError(f"{model_dir}: not a saved model (config.json + model.safetensors)")
    sd = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in load_file(str(weights)).items()}
    with atomic_dir(out_dir) as tmp:
        (Path(tmp) / "config.json").write_bytes(config.read_bytes())
        save_file(sd, str(Path(tmp) / "model.safetensors"))
    return Path(out_dir)


def _images(folder: Path) -> list[Path]:
    from quantart_runtime.inputs import IMAGE_EXTENSIONS

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise click.BadParameter(f"{folder}: no images")
    return paths


def stylize_pairs(onnx_dir, content_dir, style_dir, out, size: int = SIZE, content_ratio: float = CONTENT_RATIO,
                  output_ratio: float = OUTPUT_RATIO) -> list[dict]:
    """Stylize every content image with every style image through the runtime (ONNX Runtime, CPU).

    Images are resized (bicubic) to size × size first. Each result is written to
    out/stylized/<style>/<content>.png; returns one dict per pair (names, the three uint8 arrays and both
    quality metrics).
    """
    from quantart_runtime import Stylizer, load_image
    from quantart_runtime.images import resize, save_image
    from quantart_runtime.quality import pair_metrics

    contents = [(p, resize(load_image(p), size, size)) for p in _images(content_dir)]
    styles = [(p, resize(load_image(p), size, size)) for p in _images(style_dir)]
    rows = []
    with Stylizer.load(onnx_dir, backend="onnxruntime") as stylizer:
        for sp, style in styles:
            code = stylizer.encode_style(style, size=size)
            results = stylizer.stylize([c for _, c in contents], code, content_ratio=content_ratio,
                                       output_ratio=output_ratio)
            for (cp, content), result in zip(contents, results):
                save_image(result, Path(out) / "stylized" / sp.stem / f"{cp.stem}.png")
                rows.append({"content": cp.name, "style": sp.name, "content_image": content, "style_image": style,
                             "result_image": result, **pair_metrics(content, style, result)})
    rows.sort(key=lambda r: (r["content"], r["style"]))
    return rows


def write_report(rows: list[dict], out) -> dict:
    """grid.png, grid_matrix.png, metrics.md and metrics.json under `out`; returns their paths and the summary."""
    from quantart_runtime.quality import markdown_table, summarize
    from quantart_runtime.util import write_json, write_text

    from .grid import save_grid

    out = Path(out)
    grid = save_grid([[r["content_image"], r["style_image"], r["result_image"]] for r in rows], out / "grid.png")
    contents = list(dict.fromkeys(r["content"] for r in rows))
    styles = list(dict.fromkeys(r["style"] for r in rows))
    by = {(r["content"], r["style"]): r for r in rows}
    blank = rows[0]["content_image"] * 0 + 255
    matrix = [[blank] + [by[(contents[0], s)]["style_image"] for s in styles]]
    matrix += [[by[(c, styles[0])]["content_image"]] + [by[(c, s)]["result_image"] for s in styles] for c in contents]
    grid_matrix = save_grid(matrix, out / "grid_matrix.png")
    summary = summarize(rows)
    table = markdown_table(rows)
    write_text(out / "metrics.md", table)
    metrics = [{k: r[k] for k in ("content", "style", "structure_ssim", "palette_gain")} for r in rows]
    write_json(out / "metrics.json", {"pairs": metrics, "summary": summary, "targets": TARGETS})
    return {"grid": grid, "grid_matrix": grid_matrix, "table": table, "summary": summary}


def run_demo(out, model=None, from_scratch: bool = False, content=None, style=None, size: int = SIZE,
             content_ratio: float = CONTENT_RATIO, output_ratio: float = OUTPUT_RATIO,
             stage1_steps=STAGE1_STEPS, stage2_steps: int = STAGE2_STEPS, progress: bool = True,
             log=print) -> dict:
    """Train (with from_scratch) → export → stylize every pair → metrics and grids; returns `write_report`'s dict.

    model: a Stage 2 model directory or checkpoint (default: the shipped assets/demo_model).
    Raises ExportError / VerificationError / CheckpointError / ConfigError / DataError on failures.
    """
    from quantart_export import export_model

    out = Path(out)
    if from_scratch:
        runs = ", ".join(f"{r[0]} {n}" for r, n in zip(STAGE1_RUNS, stage1_steps))
        log(f"training Stage 1 ({runs} steps) and Stage 2 ({stage2_steps} steps) on {ASSETS} ...")
        model = train_demo_model(out / "train", stage1_steps, stage2_steps, progress)
    model = Path(model) if model is not None else DEMO_MODEL
    log(f"exporting {model} -> {out / 'onnx'} (verified against PyTorch)")
    onnx_dir = export_model(model, out / "onnx", precision="fp32", verify=True, force=True,
                            verify_res=[(size, size)], report=log)
    log("stylizing every content x style pair through the runtime (ONNX Runtime, CPU)")
    rows = stylize_pairs(onnx_dir, content or ASSETS / "content", style or ASSETS / "style", out, size,
                         content_ratio, output_ratio)
    return write_report(rows, out)


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="outputs/demo", show_default=True)
@click.option("--model", type=click.Path(exists=True), help="Stage 2 model [default: assets/demo_model].")
@click.option("--from-scratch", is_flag=True, help="Train Stage 1 + Stage 2 first (a long CPU job).")
@click.option("--content", type=click.Path(file_okay=False, exists=True), help="Content images [default: samples].")
@click.option("--style", type=click.Path(file_okay=False, exists=True), help="Style images [default: samples].")
@click.option("--size", type=click.IntRange(16, 1024), default=SIZE, show_default=True,
              help="Side the images are resized to (a multiple of the latent stride).")
@click.option("--content-ratio", type=click.FloatRange(0, 1), default=CONTENT_RATIO, show_default=True)
@click.option("--output-ratio", type=click.FloatRange(0, 1), default=OUTPUT_RATIO, show_default=True)
@click.option("--stage1-steps", default=",".join(map(str, STAGE1_STEPS)), show_default=True,
              help="Steps of the five Stage 1 runs: stage1, refine, lowlr, final, art "
                   "(assets/demo_model/TRAINING.md).")
@click.option("--stage2-steps", type=click.IntRange(1), default=STAGE2_STEPS, show_default=True)
@click.option("--no-progress", is_flag=True, help="No training progress bar.")
def demo(out, model, from_scratch, content, style, size, content_ratio, output_ratio, stage1_steps, stage2_steps,
         no_progress):
    """Stylize the sample images with the shipped demo model through the runtime and measure the results.

    Exports the model (assets/demo_model unless --model; trained first with --from-scratch), stylizes every
    content x style pair with ONNX Runtime, prints a table of structure SSIM and palette gain per pair
    (quantart_runtime.quality) and writes OUT/grid.png (content | style | result), OUT/grid_matrix.png,
    OUT/metrics.md and OUT/metrics.json. Exit code 2 on bad input or a failed export.
    """
    from quantart_export import ExportError, VerificationError

    from ..checkpoint import CheckpointError
    from ..data import DataError
    from .config import ConfigError

    needed = [p for p, given in ((DEMO_MODEL, model or from_scratch), (ASSETS / "content", content),
                                 (ASSETS / "style", style)) if not given]
    needed += [STAGE1_CONFIG, STAGE2_CONFIG] if from_scratch else []
    missing = [str(p.relative_to(ROOT)) for p in needed if not p.exists()]
    if missing:
        click.echo(f"Error: quantart demo needs a checkout of the quantart repository ({', '.join(missing)} "
                   f"not found beside this install: the demo model, sample images and configs are not in the "
                   f"wheel): in a clone, run `make demo`; or pass --model, --content and --style", err=True)
        sys.exit(2)
    start = time.time()
    try:
        report = run_demo(out, model, from_scratch, content, style, size, content_ratio, output_ratio,
                          parse_steps(stage1_steps), stage2_steps, progress=not no_progress, log=click.echo)
    except (ConfigError, DataError, CheckpointError, ExportError, VerificationError, ValueError,
            click.BadParameter) as exc:
        from quantart_runtime.util import one_line

        click.echo(f"Error: {one_line(exc)}", err=True)
        sys.exit(2)
    click.echo(report["table"])
    for key, target in TARGETS.items():
        mean = report["summary"][key]["mean"]
        verdict = "met" if mean >= target else "missed"
        click.echo(f"mean {key.replace('_', ' ')}: {mean:.3f} (target >= {target}: {verdict})")
    click.echo(f"grid (content | style | result): {report['grid']}")
    click.echo(f"grid (contents x styles): {report['grid_matrix']}")
    click.echo(f"demo finished in {time.time() - start:.0f} s")
