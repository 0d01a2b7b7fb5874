"""Build a model from its config (`model.config`, a saved config.json, a checkpoint's stored config).

`check_config` is the one validation of a model config: the kind is known, every key is a constructor
argument of that model (unknown or misspelt keys are refused in one line naming the key), the ddconfig
is complete. Configs written by quantart before the config layer (an `"sga"` sub-dict) are translated.
"""
from __future__ import annotations

from torch import nn

from .config import ArchitectureError, check_ddconfig, suggest
from .style_transfer import StyleTransfer
from .vqgan import BaseVQGAN

MODEL_CLASSES = {"stage1": BaseVQGAN, "stage2": StyleTransfer}


def _from_legacy_sga(cfg: dict, where: str) -> dict:
    """quantart ≤ 0.1 stored the SGA options as "sga": {block_num, residual, use_conv, use_selfatt}, where
    every attention block had its skip and `residual` added a skip around the whole module."""
    sga = dict(cfg.pop("sga") or {})
    if sga.pop("residual", False):
        raise ArchitectureError(f"{where}: sga.residual=True (a skip around the whole SGA module) is not the "
                                f"official architecture and is no longer supported")
    sga.pop("dropout", None)
    for key in sga:
        if key not in ("block_num", "use_conv", "use_selfatt"):
            raise ArchitectureError(f"{where}: unknown key sga.{key}")
    cfg.update(sga)
    cfg.setdefault("use_residual", True)
    return cfg


def check_config(config: dict, where: str = "config") -> dict:
    """A model config checked and completed with the constructor defaults; returns a new dict with "kind".

    Args: config: {"kind": "stage1"|"stage2", **constructor arguments}; where: names the source in errors.
    Raises: ArchitectureError (one line naming the offending key).
    """
    if not isinstance(config, dict):
        raise ArchitectureError(f"{where}: a model config must be a mapping, got {type(config).__name__}")
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind not in MODEL_CLASSES:
        raise ArchitectureError(f"{where}: unknown model kind {kind!r} (expected 'stage1' or 'stage2')")
    if kind == "stage2" and "sga" in cfg:
        cfg = _from_legacy_sga(cfg, where)
    params = MODEL_CLASSES[kind].config_parameters()
    for key in cfg:
        if key not in params:
            raise ArchitectureError(f"{where}: unknown key {key!r} for a {kind} model ({suggest(key, params)})")
    for name, p in params.items():
        if name not in cfg:
            if p.default is p.empty:
                raise ArchitectureError(f"{where}: the {kind} model config lacks {name!r}")
            cfg[name] = p.default
    cfg["ddconfig"] = check_ddconfig(cfg["ddconfig"], f"{where}: ddconfig")
    return {"kind": kind, **cfg}


def build_model(config: dict, loss: nn.Module | None = None, where: str = "config") -> nn.Module:
    """A fresh BaseVQGAN / StyleTransfer (random weights) from a model config; `loss` attaches the
    training objective. Raises ArchitectureError for a config that does not describe a model."""
    cfg = check_config(config, where)
    kind = cfg.pop("kind")
    return MODEL_CLASSES[kind](**cfg, loss=loss)
