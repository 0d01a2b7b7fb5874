"""Run a training: build the model, the data and the Lightning Trainer from a run spec, fit, and write
the final model (`<out>/model`, the project's format) and checkpoints (`<out>/checkpoints`)."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..checkpoint import save_model
from .callbacks import LAST, AtomicCheckpoint, ImageGrids
from .config import PRECISIONS, ConfigError, learning_rate, validate
from .logs import run_loggers
from .modules import Stage1Module, Stage2Module
from .sampling import ResumableBatchSampler


@dataclass
class TrainResult:
    """What :func:`fit` returns: the run folder, the saved model, the last checkpoint, the step count
    and the LightningModule.
    """
    out: Path            # the run folder
    model_dir: Path      # <out>/model: quantart.save_model format (config.json + model.safetensors)
    last_checkpoint: Path  # <out>/checkpoints/last.ckpt: Lightning checkpoint, official key names
    steps: int
    module: object       # the LightningModule (its .model is the trained BaseVQGAN / StyleTransfer)


def build_training_model(spec: dict):
    """Build the network to train, with its loss attached, from a validated run spec.

    Stage 1: a ``BaseVQGAN`` with ``VQLPIPSWithDiscriminator``; Stage 2: a ``StyleTransfer`` (frozen
    encoder/decoder loaded by the checkpoint layer from ``checkpoint_encoder`` / ``checkpoint_decoder``)
    with ``VQLPIPS_Ref``; the official ``ckpt_path`` (when given) initialises the weights instead.
    (:func:`quantart.models.build_model` builds the bare network; this adds the objective and weights.)

    Args: spec: a run spec (:func:`quantart.training.config.validate`).
    Returns: the ``nn.Module``. Raises: ``ConfigError`` when the Stage 2 latent discriminator's
    ``disc_in_channels`` differs from ``embed_dim``; the loss/checkpoint errors of the constructors.
    """
    from ..checkpoint import init_from_checkpoint, load_stage1_weights
    from ..losses import VQLPIPS_Ref, VQLPIPSWithDiscriminator
    from ..models import build_model
    from .config import model_config

    m, cfg = spec["model"], model_config(spec)
    try:
        if spec["stage"] == "stage1":
            loss = VQLPIPSWithDiscriminator(**{"vgg_weights": spec.get("vgg_weights"), **spec["loss"]})
        else:
            if int(spec["loss"].get("disc_in_channels", cfg["embed_dim"])) != int(cfg["embed_dim"]):
                raise ConfigError(f"stage2 latent discriminator: disc_in_channels "
                                  f"{spec['loss']['disc_in_channels']} must equal embed_dim {cfg['embed_dim']}")
            loss = VQLPIPS_Ref(**{**spec["loss"], "disc_in_channels": cfg["embed_dim"]})
    except TypeError as exc:  # an unknown loss parameter (flags / presets; YAML keys are checked earlier)
        raise ConfigError(f"loss: {exc}") from None
    model = build_model(cfg, loss=loss)
    # weights come from the checkpoint layer, as the official constructors' ckpt_path / checkpoint_*
    if m.get("ckpt_path"):
        init_from_checkpoint(model, m["ckpt_path"], ignore_keys=m.get("ignore_keys") or ())
    elif spec["stage"] == "stage2":
        load_stage1_weights(model, m.get("checkpoint_encoder"), m.get("checkpoint_decoder"))
    return model


def build_dataset(spec: dict):
    """The training dataset of a run spec: an official ``data.train`` config, an image folder (Stage 1)
    or unpaired content/style folders (Stage 2), random crops at ``spec['size']``.

    Raises: ``DataError`` (from quantart.data) when a folder has no usable images.
    """
    from ..data import ImageFolderDataset, UnpairedDataset, dataset_from_config

    data, size, seed = spec["data"], spec["size"], spec["seed"]
    if "train" in data:
        return dataset_from_config(data["train"], train=True, seed=seed, size=size)
    if spec["stage"] == "stage1":
        return ImageFolderDataset(data["folder"], size, random_crop=True, seed=seed)
    return UnpairedDataset(data["content"], data["style"], size, random_crop=True, seed=seed)


def resolve_resume(resume, out: Path) -> str | None:
    """The checkpoint path to resume from: ``None``/``''`` -> ``None``; ``'last'`` ->
    ``<out>/checkpoints/last.ckpt``; a folder -> its ``last.ckpt``; else the path itself.

    Raises: ``ConfigError`` when that file does not exist.
    """
    if resume in (None, "", False):
        return None
    path = out / "checkpoints" / LAST if str(resume) == "last" else Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}")
    return str(path)


def fit(spec: dict, resume=None, callbacks=(), progress_bar: bool = True) -> TrainResult:
    """Train one stage as `spec` says (see quantart.training.config) with Lightning.

    Args: spec: the run spec; resume: a checkpoint path, ``'last'`` or ``None`` (fresh run);
    callbacks: extra Lightning callbacks; progress_bar: show Lightning's progress bar.
    Returns: a :class:`TrainResult` (``<out>/model`` written by rank 0, checkpoints every
    ``every_n_steps`` and at the end). Raises: ``ConfigError`` on a bad spec or resume path,
    ``DataError`` when there are no usable images, ``NonFiniteLossError`` when a loss is NaN/inf
    (the last good checkpoint is kept).
    """
    import lightning as L

    spec = validate(dict(spec))
    out = Path(spec["out"])
    ckpt_path = resolve_resume(resume, out)
    L.seed_everything(int(spec["seed"]), workers=True, verbose=False)
    model = build_training_model(spec)
    dataset = build_dataset(spec)
    sampler = ResumableBatchSampler(dataset, spec["batch_size"], seed=spec["seed"])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=int(spec["num_workers"]),
                        persistent_workers=int(spec["num_workers"]) > 0, pin_memory=torch.cuda.is_available())
    module_cls = Stage1Module if spec["stage"] == "stage1" else Stage2Module
    meta = {"spec": json.loads(json.dumps(spec, default=str)), "stage": spec["stage"]}
    extra = {"restart_codes": int(spec.get("restart_codes", 0))} if spec["stage"] == "stage1" else {}
    module = module_cls(model, learning_rate(spec), accumulate=spec["accumulate"], batch_sampler=sampler, meta=meta,
                        **extra)
    checkpoint = AtomicCheckpoint(out / "checkpoints", spec["every_n_steps"], keep=spec.get("keep", 2))
    world = spec["devices"] * spec["num_nodes"]
    strategy = "ddp_find_unused_parameters_true" if world > 1 else "auto"
    trainer = L.Trainer(
        max_steps=2 * spec["max_steps"],  # Lightning counts both optimizers' steps
        max_epochs=-1, accelerator=spec["accelerator"], devices=spec["devices"], num_nodes=spec["num_nodes"],
        strategy=strategy, precision=PRECISIONS[spec["precision"]], use_distributed_sampler=False,
        callbacks=[checkpoint, ImageGrids(out / "images", spec["image_every"]), *callbacks],
        logger=run_loggers(out, ckpt_path), log_every_n_steps=spec["log_every"], enable_checkpointing=True,
        enable_progress_bar=progress_bar, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(out))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|resuming from a checkpoint that "
                                                  "ended before the epoch ended|on_train_batch_end).*")
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True)
    model_dir = out / "model"
    if trainer.is_global_zero:
        save_model(module.model, model_dir)
    trainer.strategy.barrier("quantart-final-model")
    return TrainResult(out=out, model_dir=model_dir, last_checkpoint=out / "checkpoints" / LAST,
                       steps=module.step, module=module)

