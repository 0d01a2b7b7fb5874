"""Training configuration: the official configs/*.yaml shape, presets, and flag overrides.

A run is described by one plain dict (JSON-able, stored in every checkpoint):
  stage            "stage1" | "stage2"
  model            the model config (constructor arguments, see quantart.models.config) plus the weight
                   initialisation the checkpoint layer performs: checkpoint_encoder / checkpoint_decoder
                   (stage2: the Stage 1 VQGANs), ckpt_path / ignore_keys (official initialisation)
  loss             the official lossconfig.params
  base_lr          official model.base_learning_rate; lr = base_lr × batch_size × world × accumulate
  data             {"train": official dataset spec} or {"folder": DIR} / {"content": DIR, "style": DIR}
  batch_size, size, num_workers, seed, max_steps, every_n_steps, image_every, log_every,
  devices, num_nodes, accelerator, precision, accumulate, out, vgg_weights
  restart_codes    Stage 1, our addition (0 = official): restart codes unused for that many steps
                   (quantart.training.codebook)
"""
from __future__ import annotations

import copy
from pathlib import Path

from ..arch import read_official_yaml
from ..models.build import check_config
from ..models.config import ArchitectureError, official_config


class ConfigError(ValueError):
    """A bad training configuration; the message is one line."""


# spec["model"] keys that are not constructor arguments: weights the checkpoint layer loads
INIT_KEYS = ("checkpoint_encoder", "checkpoint_decoder", "ckpt_path", "ignore_keys")


def model_config(spec: dict) -> dict:
    """The model config (with "kind") of a run spec: spec["model"] without the INIT_KEYS, checked.
    Raises ConfigError (one line naming an unknown key)."""
    cfg = {k: v for k, v in spec["model"].items() if k not in INIT_KEYS}
    try:
        return check_config({"kind": spec["stage"], **cfg}, "model")
    except ArchitectureError as exc:
        raise ConfigError(str(exc)) from None


def _model(kind: str, **overrides) -> dict:
    cfg = official_config(kind)
    del cfg["kind"]
    return {**cfg, **overrides}


STAGE1_LOSS = dict(disc_conditional=False, disc_in_channels=3, disc_start=10000, disc_weight=0.8,
                   codebook_weight=1.0)  # official vqgan_wikiart.yaml
STAGE2_LOSS = dict(disc_ndf=64, disc_num_layers=0, disc_conditional=False, disc_in_channels=256, disc_start=0,
                   disc_weight=1.0, disc_factor=0.8, codebook1_weight=1.0, codebook2_weight=1.0,
                   reverse_weight=1.0, style_weight=10.0, G_step=1)  # official landscape2art.yaml

TINY_DDCONFIG = dict(double_z=False, z_channels=16, resolution=32, in_channels=3, out_ch=3, ch=16,
                     ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)

PRESETS = {
    # the official full-size architecture and objectives
    "official": {
        "stage1": dict(model=_model("stage1"), loss=STAGE1_LOSS, batch_size=5, size=256, max_steps=100000),
        "stage2": dict(model=_model("stage2"), loss=STAGE2_LOSS, batch_size=8, size=256, max_steps=100000),
    },
    # a few-minute CPU model (the demo, smoke tests): crude results
    "tiny": {
        "stage1": dict(model=_model("stage1", ddconfig=TINY_DDCONFIG, n_embed=64, embed_dim=16),
                       loss=dict(STAGE1_LOSS, disc_start=200, disc_weight=0.8, perceptual_weight=0.0, disc_ndf=16,
                                 disc_num_layers=2),
                       batch_size=4, size=32, max_steps=300, base_lr=1e-4),
        "stage2": dict(model=_model("stage2", ddconfig=TINY_DDCONFIG, n_embed=64, embed_dim=16, block_num=2),
                       loss=dict(STAGE2_LOSS, disc_in_channels=16, disc_ndf=16),
                       batch_size=4, size=32, max_steps=200, base_lr=1e-4),
    },
}

COMMON = dict(base_lr=4.5e-6, num_workers=0, seed=0, every_n_steps=1000, image_every=1000, log_every=50,
              devices=1, num_nodes=1, accelerator="auto", precision="32", accumulate=1, out="runs/quantart",
              vgg_weights=None, keep=2, restart_codes=0)
PRECISIONS = {"32": "32-true", "32-true": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}


def preset(stage: str, name: str = "official") -> dict:
    """A fresh run spec of `stage` ("stage1" | "stage2") from preset `name` ("official" | "tiny"), without data.
    Raises ConfigError for an unknown stage or preset."""
    if stage not in ("stage1", "stage2"):
        raise ConfigError(f"unknown stage {stage!r} (expected stage1 or stage2)")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (expected one of {', '.join(PRESETS)})")
    spec = {"stage": stage, **copy.deepcopy(COMMON), **copy.deepcopy(PRESETS[name][stage]), "data": {}}
    return spec


def from_yaml(stage: str, path, base: dict | None = None) -> dict:
    """Merge an official configs/*.yaml into a run spec (default base: the official preset), through the
    one official-YAML translator (quantart.arch.read_official_yaml): the model config exactly as the
    official constructor reads model.params, lossconfig.params, base_learning_rate, the Stage 1
    checkpoints / ckpt_path, and data.params (batch_size, num_workers, train).
    Raises ConfigError (one line) for an unreadable file, an unknown key or a config of the other stage."""
    try:
        official = read_official_yaml(path)
    except ArchitectureError as exc:
        raise ConfigError(str(exc)) from None
    if official.kind != stage:
        raise ConfigError(f"{path}: a {official.kind} config (model.target), not a {stage} one")
    spec = copy.deepcopy(base) if base is not None else preset(stage)
    if official.base_lr is not None:
        spec["base_lr"] = official.base_lr
    spec["model"] = {k: v for k, v in official.model.items() if k != "kind"}
    for key in INIT_KEYS:
        value = getattr(official, key)
        if value:
            spec["model"][key] = str(value) if key != "ignore_keys" else list(value)
    if official.loss:
        spec["loss"] = dict(official.loss)
    data = official.data
    if "batch_size" in data:
        spec["batch_size"] = int(data["batch_size"])
    if "num_workers" in data:
        spec["num_workers"] = int(data["num_workers"])
    if data.get("train"):
        spec["data"] = {"train": data["train"]}
        size = (data["train"].get("params") or {}).get("size")
        if size:
            spec["size"] = int(size)
    return spec


def apply_overrides(spec: dict, **overrides) -> dict:
    """Flags override the config; None means 'not given'. `data` and loss/model keys merge."""
    spec = copy.deepcopy(spec)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("loss", "model"):
            spec[key] = {**spec.get(key, {}), **value}
        else:
            spec[key] = value
    return validate(spec)


def validate(spec: dict) -> dict:
    """Check a run spec (numbers, precision, the model config, the Stage 1 checkpoints, data); returns it.
    Raises ConfigError (one line)."""
    positive = ("batch_size", "size", "max_steps", "every_n_steps", "devices", "num_nodes", "accumulate", "log_every")
    for key in positive:
        if not isinstance(spec.get(key), int) or spec[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {spec.get(key)!r}")
    for key in ("image_every", "num_workers", "seed", "restart_codes"):
        if not isinstance(spec.get(key, 0), int) or spec.get(key, 0) < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {spec.get(key)!r}")
    if str(spec["precision"]) not in PRECISIONS:
        raise ConfigError(f"precision must be one of 32, 16-mixed, bf16-mixed, got {spec['precision']!r}")
    spec["precision"] = str(spec["precision"])
    model = model_config(spec)
    stride = 2 ** (len(model["ddconfig"]["ch_mult"]) - 1)
    if spec["size"] % stride:
        raise ConfigError(f"size {spec['size']} is not a multiple of the latent stride {stride}")
    if spec["model"].get("ckpt_path") and not Path(spec["model"]["ckpt_path"]).exists():
        raise ConfigError(f"{spec['model']['ckpt_path']}: no such checkpoint (ckpt_path)")
    if spec["stage"] == "stage2" and not spec["model"].get("ckpt_path"):  # official: ckpt_path replaces them
        for key in ("checkpoint_encoder", "checkpoint_decoder"):
            if not spec["model"].get(key):
                raise ConfigError(f"stage2 needs {key.replace('checkpoint_', '--')}-ckpt (a Stage 1 checkpoint)")
            if not Path(spec["model"][key]).exists():
                raise ConfigError(f"{spec['model'][key]}: no such checkpoint ({key})")
    if spec["stage"] == "stage2":
        latent = spec["size"] // stride
        if latent < 6 and int(spec["loss"].get("disc_num_layers", 0)) == 0:
            raise ConfigError(f"size {spec['size']} gives {latent}x{latent} latents; the latent discriminator "
                              f"needs at least 6x6 (size >= {6 * stride})")
    data = spec.get("data") or {}
    if not data:
        need = "--data DIR" if spec["stage"] == "stage1" else "--content DIR and --style DIR"
        raise ConfigError(f"no training data: give {need} or a config with data.params.train")
    return spec


def learning_rate(spec: dict) -> float:
    """The official scaling: base_lr × batch size × devices (× nodes) × accumulation."""
    world = int(spec["devices"]) * int(spec["num_nodes"])
    return float(spec["base_lr"]) * int(spec["batch_size"]) * world * int(spec["accumulate"])
