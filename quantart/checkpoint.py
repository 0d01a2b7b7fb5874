"""The checkpoint layer: reading official Lightning .ckpt, plain state_dict .pt and the project's own
format (a directory with config.json + model.safetensors, diffusers style), writing the project's
format, and loading weights into models (Stage 1 VQGANs into a Stage 2 model, the official
`ckpt_path` initialisation). Model constructors never read files; this module does.

Where a model's config comes from (`load_model`): an explicit `config` (dict or official YAML) first,
then the config stored with the weights (config.json, or `checkpoint["quantart"]["config"]` in the
Lightning checkpoints training writes), and only when there is none (official checkpoints) the config
inferred from tensor names and shapes. The model says which in `model.config_source`
("dict" | "yaml" | "stored" | "inferred") and in a log line (logger "quantart").
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import torch
from torch import nn

from quantart_runtime.util import atomic_dir, one_line

from .arch import ArchitectureError, infer_config, read_official_yaml
from .models.build import build_model, check_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STORED_KEY = "quantart"  # a Lightning checkpoint's record of the run: {"config": model.config, ...}
log = logging.getLogger("quantart")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


def _what_file(path: Path) -> str:
    """What a file that torch.save did not write is, from its first bytes ("a text file", ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or b"\0" in head:  # (a character cut at 512 bytes is still text)
            return "a binary file of an unknown format"
    return "a text file"


def _torch_format(path: Path) -> bool:
    """Whether the file starts as torch.save writes (a zip archive, or a legacy pickle)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _torch_load(path: Path, trust: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if not _torch_format(path):
            raise CheckpointError(f"{path}: not a readable checkpoint (it is {_what_file(path)})") from None
        if not trust:
            raise CheckpointError(
                f"{path}: needs arbitrary unpickling, refused for safety ({one_line(exc, 200)}); pass trust=True "
                f"(CLI: --trust-checkpoint) only if you trust where it came from") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(exc, 200)})") from None
    except Exception as exc:  # torch raises many types for corrupt files (IndexError, EOFError, ...)
        if not _torch_format(path):
            raise CheckpointError(f"{path}: not a readable checkpoint (it is {_what_file(path)})") from None
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt?): "
                              f"{one_line(exc, 200)}") from None


def read_checkpoint(path, trust: bool = False) -> tuple[dict, dict | None]:
    """(state_dict, stored model config or None) of a checkpoint in any supported format, on CPU.

    Args: path: .ckpt / .pt file, .safetensors file, or a saved model directory; trust: allow
    arbitrary unpickling (only for files you trust). Raises CheckpointError (one line).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    stored = None
    if path.is_dir():
        if not (path / WEIGHTS_NAME).exists():
            raise CheckpointError(f"{path}: a directory without {WEIGHTS_NAME} (not a saved quantart model)")
        path = path / WEIGHTS_NAME
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file: {one_line(exc)}") from None
        cfg_file = path.parent / CONFIG_NAME
        if cfg_file.exists():
            try:
                stored = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{cfg_file}: not a readable model config ({one_line(exc)})") from None
        return sd, stored
    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        record = obj.get(STORED_KEY)
        if isinstance(record, dict) and isinstance(record.get("config"), dict):
            stored = record["config"]
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a checkpoint (expected a state_dict of tensors or a dict with "
                              f"'state_dict')")
    return obj, stored


def read_state_dict(path, trust: bool = False) -> dict:
    """The model state_dict stored at `path` (any supported format), on CPU. Raises CheckpointError."""
    return read_checkpoint(path, trust)[0]


def select_prefix(sd: dict, prefix: str) -> dict:
    """The entries of `sd` under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, sd: dict, where: str) -> None:
    """load_state_dict(strict) with missing / unexpected / mis-shaped keys in one message.
    Raises CheckpointError naming up to ten keys of each kind."""
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


def _resolve_config(path: Path, sd: dict, stored: dict | None, config) -> tuple[dict, str]:
    if isinstance(config, dict):
        return check_config(config, "config"), "dict"
    if config is not None:
        return read_official_yaml(config).model, "yaml"
    if stored is not None:
        return check_config(stored, f"{path}: stored config"), "stored"
    return infer_config(sd), "inferred"


SOURCE_TEXT = {"dict": "the config given", "yaml": "the official YAML config", "stored": "the config stored with it",
               "inferred": "inferred from tensor names and shapes (no stored config)"}


def load_model(path, config=None, trust: bool = False, expect: type | None = None) -> nn.Module:
    """Load a BaseVQGAN or StyleTransfer from any supported checkpoint, in eval mode.

    Args: path: checkpoint file or saved model directory; config: None (the stored config, else
    inferred), a model config dict, or the path of an official QuantArt YAML; trust: allow arbitrary
    unpickling (only for files you trust); expect: the model class required.
    Returns: the model, with `model.config_source` saying where its config came from.
    Raises: CheckpointError (one line). loss.* weights (training only) are ignored.
    """
    path = Path(path)
    sd, stored = read_checkpoint(path, trust=trust)
    try:
        cfg, source = _resolve_config(path, sd, stored, config)
        model = build_model(cfg)
    except ArchitectureError as exc:
        text = str(exc)
        raise CheckpointError(text if text.startswith(str(path)) or config is not None
                              else f"{path}: unsupported architecture: {text}") from None
    holds = "stage2" if any(k.startswith("model_x2y.") for k in sd) else "stage1"
    if cfg["kind"] != holds:
        raise CheckpointError(f"{path}: holds a {holds} model but the config describes a {cfg['kind']} model")
    if expect is not None and not isinstance(model, expect):
        raise CheckpointError(f"{path}: holds a {type(model).__name__} ({cfg['kind']}), not a {expect.__name__}")
    weights = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    load_strict(model, weights, str(path))
    model.config_source = source
    log.info("%s: %s model config %s", path, cfg["kind"], SOURCE_TEXT[source])
    return model.eval()


def save_model(model: nn.Module, path) -> Path:
    """Write `path/` with config.json (`model.config`) and model.safetensors (loss.* left out),
    atomically (an existing `path` is replaced as a whole). Returns `Path(path)`."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                   if not k.startswith("loss.")}
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "quantart": "1"})
        (tmp / CONFIG_NAME).write_text(json.dumps(model.config, indent=2) + "\n")
    return path


def _load_parts(path, sd: dict, parts: dict) -> None:
    for prefix, module in parts.items():
        part = select_prefix(sd, prefix)
        if not part:
            raise CheckpointError(f"{path}: not a Stage 1 VQGAN checkpoint (no '{prefix}*' weights)")
        load_strict(module, part, f"{path} [{prefix}*]")


def load_stage1_weights(model, checkpoint_encoder=None, checkpoint_decoder=None, trust: bool = False) -> None:
    """Fill a StyleTransfer's frozen parts from Stage 1 VQGAN checkpoints, as the official
    `checkpoint_encoder` / `checkpoint_decoder`: encoder, quant_conv, quantize → encoder, quant_conv,
    quantize_enc; and encoder, quant_conv, decoder, post_quant_conv, quantize → encoder_real,
    quant_conv_real, decoder, post_quant_conv, quantize_dec (one read when both are the same file).
    Raises CheckpointError (one line)."""
    read: dict = {}
    for path, parts, what in ((checkpoint_encoder, model.content_vqgan_parts(), "content"),
                              (checkpoint_decoder, model.art_vqgan_parts(), "art")):
        if path is None:
            continue
        key = str(Path(path).resolve())
        if key not in read:
            read[key] = read_state_dict(path, trust=trust)
        _load_parts(path, read[key], parts)
        log.info("loaded the %s VQGAN from %s", what, path)


def init_from_checkpoint(model: nn.Module, path, ignore_keys=(), trust: bool = False) -> None:
    """The official `ckpt_path` initialisation: load every tensor of `path` whose name the model has
    (keys starting with one of `ignore_keys` dropped first; others left as they are, strict=False).
    Raises CheckpointError for an unreadable file, a shape mismatch, or no tensor in common."""
    sd = {k: v for k, v in read_state_dict(path, trust=trust).items()
          if not any(k.startswith(prefix) for prefix in ignore_keys)}
    own = model.state_dict()
    shapes = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in sd.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        raise CheckpointError(f"{path}: does not fit the model — wrong shapes: {', '.join(shapes[:10])}")
    common = {k: v for k, v in sd.items() if k in own}
    if not common:
        raise CheckpointError(f"{path}: no weight of this model in the checkpoint (ckpt_path)")
    model.load_state_dict(common, strict=False)
    log.info("restored %d tensors from %s", len(common), path)
