"""`quantart train stage1|stage2`: train QuantArt on one CPU, several GPUs or several nodes (DDP).

Precedence: --preset (default: official) < --config (official configs/*.yaml shape) < flags.
"""
from __future__ import annotations

import sys

import click

COMMON_FLAGS = [
    click.option("--config", "config", type=click.Path(dir_okay=False), help="Official-shape YAML "
                 "(model.params with ddconfig and lossconfig, data.params)."),
    click.option("--preset", type=click.Choice(["official", "tiny"]), default="official", show_default=True,
                 help="Architecture/objective defaults before --config and flags."),
    click.option("--out", type=click.Path(file_okay=False), help="Run folder (checkpoints/, model/, logs/, images/)."),
    click.option("--max-steps", type=int, help="Training steps (one generator + one discriminator update each)."),
    click.option("--batch-size", type=int, help="Per-device batch size."),
    click.option("--size", type=int, help="Training crop size."),
    click.option("--devices", type=int, help="Devices per node."),
    click.option("--num-nodes", type=int, help="Nodes (DDP)."),
    click.option("--accelerator", type=click.Choice(["auto", "cpu", "gpu", "cuda", "mps"]),
                 help="Lightning accelerator."),
    click.option("--precision", type=click.Choice(["32", "16-mixed", "bf16-mixed"]), help="Numeric precision."),
    click.option("--accumulate", type=int, help="Gradient accumulation batches per step."),
    click.option("--base-lr", type=float, help="lr = base-lr x batch size x devices x nodes x accumulate."),
    click.option("--every-n-steps", type=int, help="Checkpoint interval (steps)."),
    click.option("--image-every", type=int, help="Progress image grid interval (steps; 0: none)."),
    click.option("--log-every", type=int, help="Logger interval (steps)."),
    click.option("--num-workers", type=int, help="DataLoader workers per device."),
    click.option("--seed", type=int, help="Seed of the weights init, crops and data order."),
    click.option("--disc-start", type=int, help="Step from which the discriminator loss counts."),
    click.option("--resume", help="Checkpoint to resume from, or 'last' (<out>/checkpoints/last.ckpt)."),
    click.option("--no-progress", is_flag=True, help="No progress bar."),
]


def common(f):
    """Decorator: add the flags both stages share (``COMMON_FLAGS``) to a click command."""
    for option in reversed(COMMON_FLAGS):
        f = option(f)
    return f


def _run(stage: str, opts: dict, data: dict, model: dict | None = None, loss: dict | None = None) -> None:
    from ..checkpoint import CheckpointError
    from ..data import DataError
    from ..modules.lpips import VGGWeightsNotFound
    from .config import ConfigError, apply_overrides, from_yaml, preset
    from .modules import NonFiniteLossError
    from .runner import fit

    try:
        spec = preset(stage, opts["preset"])
        if opts["config"]:
            spec = from_yaml(stage, opts["config"], spec)
        if opts["disc_start"] is not None:
            loss = {**(loss or {}), "disc_start": opts["disc_start"]}
        spec = apply_overrides(
            spec, data=data or None, model=model or None, loss=loss or None, out=opts["out"],
            max_steps=opts["max_steps"], batch_size=opts["batch_size"], size=opts["size"], devices=opts["devices"],
            num_nodes=opts["num_nodes"], accelerator=opts["accelerator"], precision=opts["precision"],
            accumulate=opts["accumulate"], base_lr=opts["base_lr"], every_n_steps=opts["every_n_steps"],
            image_every=opts["image_every"], log_every=opts["log_every"], num_workers=opts["num_workers"],
            seed=opts["seed"], vgg_weights=opts.get("vgg_weights"), restart_codes=opts.get("restart_codes"))
        result = fit(spec, resume=opts["resume"], progress_bar=not opts["no_progress"])
    except (ConfigError, DataError, VGGWeightsNotFound, CheckpointError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except NonFiniteLossError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(3)
    if result.module.trainer.is_global_zero:
        click.echo(f"trained {result.steps} steps")
        click.echo(f"model: {result.model_dir}")
        click.echo(f"checkpoint: {result.last_checkpoint}")


@click.group()
def train():
    """Train Stage 1 (VQGAN) or Stage 2 (style transfer); flags override the preset and --config."""


@train.command()
@click.option("--data", "folder", type=click.Path(), help="Image folder (recursive).")
@click.option("--perceptual-weight", type=float, help="LPIPS weight (0: no LPIPS, no VGG16 weights needed).")
@click.option("--vgg-weights", type=click.Path(dir_okay=False),
              help="torchvision VGG16 weights (vgg16-397923af.pth); default $QUANTART_VGG16 or the torch hub cache.")
@click.option("--restart-dead-codes", "restart_codes", type=click.IntRange(0),
              help="Every N steps, restart the codes no latent used in those N steps from encoder outputs "
                   "(ours, against codebook collapse on small data; default 0: off, as the official code).")
@click.option("--init-from", "init_from", type=click.Path(),
              help="Start from this checkpoint's weights (the official model.params.ckpt_path; optimizer and step "
                   "start fresh, unlike --resume).")
@common
def stage1(folder, perceptual_weight, init_from, **opts):
    """Train a VQGAN (encoder, codebook, decoder) on an image folder.

    Writes checkpoints to OUT/checkpoints and the model to OUT/model. Exit code 2 on bad input (one
    line on stderr), 3 when a loss becomes NaN/inf.
    """
    loss = {"perceptual_weight": perceptual_weight} if perceptual_weight is not None else None
    model = {"ckpt_path": init_from} if init_from else None
    _run("stage1", opts, {"folder": folder} if folder else {}, model=model, loss=loss)


@train.command()
@click.option("--content", type=click.Path(), help="Content image folder.")
@click.option("--style", type=click.Path(), help="Style (art) image folder.")
@click.option("--encoder-ckpt", type=click.Path(), help="Stage 1 content VQGAN (official checkpoint_encoder).")
@click.option("--decoder-ckpt", type=click.Path(), help="Stage 1 art VQGAN (official checkpoint_decoder).")
@click.option("--style-weight", type=float, help="Style loss weight (official 10).")
@common
def stage2(content, style, encoder_ckpt, decoder_ckpt, style_weight, **opts):
    """Train the style-guided attention (SGA) on frozen Stage 1 VQGANs.

    Writes checkpoints to OUT/checkpoints and the model to OUT/model. Exit code 2 on bad input (one
    line on stderr), 3 when a loss becomes NaN/inf.
    """
    if (content is None) != (style is None):
        raise click.UsageError("give both --content and --style")
    data = {"content": content, "style": style} if content else {}
    model = {k: v for k, v in (("checkpoint_encoder", encoder_ckpt), ("checkpoint_decoder", decoder_ckpt)) if v}
    loss = {"style_weight": style_weight} if style_weight is not None else None
    _run("stage2", opts, data, model=model, loss=loss)
