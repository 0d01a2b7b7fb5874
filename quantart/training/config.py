"""Training configuration: the official configs/*.yaml shape, presets, and flag overrides.

A run is described by one plain dict (JSON-able, stored in every checkpoint):
  stage            "stage1" | "stage2"
  model            ddconfig, n_embed, embed_dim (+ sga, checkpoint_encoder, checkpoint_decoder for stage2)
  loss             the official lossconfig.params
  base_lr          official model.base_learning_rate; lr = base_lr × batch_size × world × accumulate
  data             {"train": official dataset spec} or {"folder": DIR} / {"content": DIR, "style": DIR}
  batch_size, size, num_workers, seed, max_steps, every_n_steps, image_every, log_every,
  devices, num_nodes, accelerator, precision, accumulate, out, vgg_weights
"""
from __future__ import annotations

import copy
from pathlib import Path

from ..models.config import DEFAULT_DDCONFIG, DEFAULT_SGA


class ConfigError(ValueError):
    """A bad training configuration; the message is one line."""


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
        "stage1": dict(model=dict(ddconfig=DEFAULT_DDCONFIG, n_embed=1024, embed_dim=256), loss=STAGE1_LOSS,
                       batch_size=5, size=256, max_steps=100000),
        "stage2": dict(model=dict(ddconfig=DEFAULT_DDCONFIG, n_embed=1024, embed_dim=256, sga=DEFAULT_SGA),
                       loss=STAGE2_LOSS, batch_size=8, size=256, max_steps=100000),
    },
    # a few-minute CPU model (the demo, smoke tests): crude results
    "tiny": {
        "stage1": dict(model=dict(ddconfig=TINY_DDCONFIG, n_embed=64, embed_dim=16),
                       loss=dict(STAGE1_LOSS, disc_start=200, disc_weight=0.8, perceptual_weight=0.0, disc_ndf=16,
                                 disc_num_layers=2),
                       batch_size=4, size=32, max_steps=300, base_lr=1e-4),
        "stage2": dict(model=dict(ddconfig=TINY_DDCONFIG, n_embed=64, embed_dim=16,
                                  sga=dict(DEFAULT_SGA, block_num=2)),
                       loss=dict(STAGE2_LOSS, disc_in_channels=16, disc_ndf=16),
                       batch_size=4, size=32, max_steps=200, base_lr=1e-4),
    },
}

COMMON = dict(base_lr=4.5e-6, num_workers=0, seed=0, every_n_steps=1000, image_every=1000, log_every=50,
              devices=1, num_nodes=1, accelerator="auto", precision="32", accumulate=1, out="runs/quantart",
              vgg_weights=None, keep=2)
PRECISIONS = {"32": "32-true", "32-true": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed"}


def preset(stage: str, name: str = "official") -> dict:
    if stage not in ("stage1", "stage2"):
        raise ConfigError(f"unknown stage {stage!r} (expected stage1 or stage2)")
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (expected one of {', '.join(PRESETS)})")
    spec = {"stage": stage, **copy.deepcopy(COMMON), **copy.deepcopy(PRESETS[name][stage]), "data": {}}
    return spec


def from_yaml(stage: str, path, base: dict | None = None) -> dict:
    """Merge an official configs/*.yaml (model.params with ddconfig and lossconfig, data.params)."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or "model" not in raw:
        raise ConfigError(f"{path}: expected the official config shape (model.params, data.params)")
    spec = copy.deepcopy(base) if base is not None else preset(stage)
    model = raw.get("model") or {}
    params = dict(model.get("params") or {})
    if "ddconfig" not in params:
        raise ConfigError(f"{path}: no model.params.ddconfig")
    if "base_learning_rate" in model:
        spec["base_lr"] = float(model["base_learning_rate"])
    spec["model"] = {"ddconfig": dict(params["ddconfig"]), "n_embed": int(params.get("n_embed", 1024)),
                     "embed_dim": int(params.get("embed_dim", 256))}
    if stage == "stage2":
        sga = dict(DEFAULT_SGA)
        for key, official in (("residual", "use_residual"), ("use_conv", "use_conv"), ("use_selfatt", "use_selfatt")):
            if official in params:
                sga[key] = bool(params[official])
        sga.update(params.get("sga") or {})
        spec["model"]["sga"] = sga
        for key in ("checkpoint_encoder", "checkpoint_decoder"):
            if params.get(key):
                spec["model"][key] = str(params[key])
    loss = (params.get("lossconfig") or {}).get("params")
    if loss:
        spec["loss"] = dict(loss)
    data = (raw.get("data") or {}).get("params") or {}
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
    positive = ("batch_size", "size", "max_steps", "every_n_steps", "devices", "num_nodes", "accumulate", "log_every")
    for key in positive:
        if not isinstance(spec.get(key), int) or spec[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {spec.get(key)!r}")
    for key in ("image_every", "num_workers", "seed"):
        if not isinstance(spec.get(key), int) or spec[key] < 0:
            raise ConfigError(f"{key} must be a non-negative integer, got {spec.get(key)!r}")
    if str(spec["precision"]) not in PRECISIONS:
        raise ConfigError(f"precision must be one of 32, 16-mixed, bf16-mixed, got {spec['precision']!r}")
    spec["precision"] = str(spec["precision"])
    stride = 2 ** (len(spec["model"]["ddconfig"]["ch_mult"]) - 1)
    if spec["size"] % stride:
        raise ConfigError(f"size {spec['size']} is not a multiple of the latent stride {stride}")
    if spec["stage"] == "stage2":
        for key in ("checkpoint_encoder", "checkpoint_decoder"):
            if not spec["model"].get(key):
                raise ConfigError(f"stage2 needs {key.replace('checkpoint_', '--')}-ckpt (a Stage 1 checkpoint)")
            if not Path(spec["model"][key]).exists():
                raise ConfigError(f"{spec['model'][key]}: no such checkpoint ({key})")
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
