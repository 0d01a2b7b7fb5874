"""Checkpoint I/O: official Lightning .ckpt, plain state_dict .pt, and the project's own format
(a directory with config.json + model.safetensors, diffusers style)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .arch import ArchitectureError, config_from_yaml, infer_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not trust:
            first = str(exc).strip().splitlines()[0][:200]
            raise CheckpointError(
                f"{path}: needs arbitrary unpickling, refused for safety ({first}); pass trust=True "
                f"(CLI: --trust-checkpoint) only if you trust where it came from") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    except Exception as exc:  # torch raises many types for corrupt files (IndexError, EOFError, ...)
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): {msg}") from None


def read_state_dict(path, trust: bool = False) -> dict:
    """The model state_dict stored at `path` (any supported format), on CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        if not (path / WEIGHTS_NAME).exists():
            raise CheckpointError(f"{path}: a directory without {WEIGHTS_NAME} (not a saved quantart model)")
        path = path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a checkpoint (expected a state_dict of tensors or a dict with 'state_dict')")
    return obj


def select_prefix(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, sd: dict, where: str) -> None:
    """load_state_dict(strict) with missing / unexpected / mis-shaped keys in one message."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own
              if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            more = f" (+{len(items) - 10} more)" if len(items) > 10 else ""
            problems.append(f"{label}: {', '.join(items[:10])}{more}")
    if problems:
        raise CheckpointError(f"{where}: does not fit the model — " + "; ".join(problems))
    module.load_state_dict(sd, strict=True)


def build_model(config: dict) -> nn.Module:
    from .models import BaseVQGAN, StyleTransfer

    kind = config.get("kind")
    args = {k: v for k, v in config.items() if k != "kind"}
    if kind == "stage1":
        return BaseVQGAN(**args)
    if kind == "stage2":
        return StyleTransfer(**args)
    raise CheckpointError(f"unknown model kind {kind!r} (expected 'stage1' or 'stage2')")


def _config_for(path: Path, sd: dict, config) -> dict:
    if isinstance(config, dict):
        return config
    if config is not None:
        return config_from_yaml(config)
    cfg_file = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if path.is_dir() or path.suffix == ".safetensors":
        if cfg_file.exists():
            return json.loads(cfg_file.read_text())
    return infer_config(sd)


def load_model(path, config=None, trust: bool = False, expect: type | None = None) -> nn.Module:
    """Load a BaseVQGAN or StyleTransfer from any supported checkpoint, in eval mode.

    config: None (infer the architecture from tensor names and shapes, or the saved config.json),
    a config dict, or the path of an official QuantArt YAML config. `trust=True` allows arbitrary
    unpickling (only for files you trust). loss.* weights (training only) are ignored.
    """
    path = Path(path)
    sd = read_state_dict(path, trust=trust)
    try:
        cfg = _config_for(path, sd, config)
        model = build_model(cfg)
    except (ArchitectureError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unsupported architecture: {exc}") from None
    if expect is not None and not isinstance(model, expect):
        raise CheckpointError(f"{path}: holds a {type(model).__name__} ({cfg['kind']}), not a {expect.__name__}")
    weights = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    load_strict(model, weights, str(path))
    return model.eval()


def _atomic_dir(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a saved model is an ordinary folder
    return tmp


def save_model(model: nn.Module, path) -> Path:
    """Write `path/` with config.json and model.safetensors, atomically (temp dir + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = _atomic_dir(path)
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                   if not k.startswith("loss.")}
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "quantart": "1"})
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
