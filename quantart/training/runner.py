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
from .modules import Stage1Module, Stage2Module
from .sampling import ResumableBatchSampler


@dataclass
class TrainResult:
    out: Path            # the run folder
    model_dir: Path      # <out>/model: quantart.save_model format (config.json + model.safetensors)
    last_checkpoint: Path  # <out>/checkpoints/last.ckpt: Lightning checkpoint, official key names
    steps: int
    module: object       # the LightningModule (its .model is the trained BaseVQGAN / StyleTransfer)


def build_model(spec: dict):
    from ..losses import VQLPIPS_Ref, VQLPIPSWithDiscriminator
    from ..models import BaseVQGAN, StyleTransfer

    m = spec["model"]
    if spec["stage"] == "stage1":
        loss = VQLPIPSWithDiscriminator(**{"vgg_weights": spec.get("vgg_weights"), **spec["loss"]})
        return BaseVQGAN(m["ddconfig"], m["n_embed"], m["embed_dim"], loss=loss)
    if int(spec["loss"].get("disc_in_channels", m["embed_dim"])) != int(m["embed_dim"]):
        raise ConfigError(f"stage2 latent discriminator: disc_in_channels {spec['loss']['disc_in_channels']} "
                          f"must equal embed_dim {m['embed_dim']}")
    loss = VQLPIPS_Ref(**{**spec["loss"], "disc_in_channels": m["embed_dim"]})
    return StyleTransfer(m["ddconfig"], m["n_embed"], m["embed_dim"], sga=m.get("sga"),
                         checkpoint_encoder=m["checkpoint_encoder"], checkpoint_decoder=m["checkpoint_decoder"],
                         loss=loss)


def build_dataset(spec: dict):
    from ..data import ImageFolderDataset, UnpairedDataset, dataset_from_config

    data, size, seed = spec["data"], spec["size"], spec["seed"]
    if "train" in data:
        return dataset_from_config(data["train"], train=True, seed=seed, size=size)
    if spec["stage"] == "stage1":
        return ImageFolderDataset(data["folder"], size, random_crop=True, seed=seed)
    return UnpairedDataset(data["content"], data["style"], size, random_crop=True, seed=seed)


def _loggers(out: Path):
    from lightning.pytorch.loggers import CSVLogger

    loggers = [CSVLogger(str(out), name="logs", version="")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
        import tensorboard  # noqa: F401  (the logger needs it or tensorboardX)
        loggers.append(TensorBoardLogger(str(out), name="tensorboard", version=""))
    except ImportError:
        warnings.warn("tensorboard is not installed: CSV logs only (pip install tensorboard for TensorBoard logs)",
                      stacklevel=2)
    return loggers


def resolve_resume(resume, out: Path) -> str | None:
    if resume in (None, "", False):
        return None
    path = out / "checkpoints" / LAST if str(resume) == "last" else Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {path}")
    return str(path)


def fit(spec: dict, resume=None, callbacks=(), progress_bar: bool = True) -> TrainResult:
    """Train one stage as `spec` says (see quantart.training.config); resume=path | 'last' | None."""
    import lightning as L

    spec = validate(dict(spec))
    out = Path(spec["out"])
    ckpt_path = resolve_resume(resume, out)
    L.seed_everything(int(spec["seed"]), workers=True, verbose=False)
    model = build_model(spec)
    dataset = build_dataset(spec)
    sampler = ResumableBatchSampler(dataset, spec["batch_size"], seed=spec["seed"])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=int(spec["num_workers"]),
                        persistent_workers=int(spec["num_workers"]) > 0, pin_memory=torch.cuda.is_available())
    module_cls = Stage1Module if spec["stage"] == "stage1" else Stage2Module
    meta = {"spec": json.loads(json.dumps(spec, default=str)), "stage": spec["stage"]}
    module = module_cls(model, learning_rate(spec), accumulate=spec["accumulate"], batch_sampler=sampler, meta=meta)
    checkpoint = AtomicCheckpoint(out / "checkpoints", spec["every_n_steps"], keep=spec.get("keep", 2))
    world = spec["devices"] * spec["num_nodes"]
    strategy = "ddp_find_unused_parameters_true" if world > 1 else "auto"
    trainer = L.Trainer(
        max_steps=2 * spec["max_steps"],  # Lightning counts both optimizers' steps
        max_epochs=-1, accelerator=spec["accelerator"], devices=spec["devices"], num_nodes=spec["num_nodes"],
        strategy=strategy, precision=PRECISIONS[spec["precision"]], use_distributed_sampler=False,
        callbacks=[checkpoint, ImageGrids(out / "images", spec["image_every"]), *callbacks],
        logger=_loggers(out), log_every_n_steps=spec["log_every"], enable_checkpointing=True,
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

