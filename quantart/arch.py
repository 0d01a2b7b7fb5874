"""Model configs from outside the project: inferred from an official state_dict's tensor names and
shapes, or translated from an official QuantArt `configs/*.yaml`.

`read_official_yaml` is the one translator of the official YAML shape; `quantart.load_model(config=...)`
and `quantart train --config` both use it. It maps `model.params` exactly as the official
`VQModel` / `VQModel_Ref` constructors read them (`use_residual` → the skip inside every SGA attention
block, `use_conv`, `use_selfatt`, `ddconfig`, `n_embed`, `embed_dim`, `lossconfig.params`, ...) and refuses
unknown or misspelt keys with one line naming the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .models.build import check_config
from .models.config import ArchitectureError, suggest

__all__ = ["ArchitectureError", "OfficialConfig", "infer_config", "read_official_yaml", "translate_official"]


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_config(sd: dict) -> dict:
    """Model config from a (prefix-free) official state_dict: stage1 or stage2.

    What tensors cannot tell takes the official value: `use_residual` (no weights of its own) is True,
    as in every official Stage 2 config; the resolution is expressed at 256 (only the levels matter).
    Raises ArchitectureError for a state_dict that is not a QuantArt / VQGAN model.
    """
    keys = list(sd)
    if "encoder.conv_in.weight" not in sd or "quant_conv.weight" not in sd:
        raise ArchitectureError("not a QuantArt/VQGAN state_dict (no encoder.conv_in.weight / quant_conv.weight)")
    stage2 = any(k.startswith("model_x2y.") for k in keys)
    codebook = "quantize_dec.embedding.weight" if stage2 else "quantize.embedding.weight"
    if codebook not in sd:
        raise ArchitectureError(f"no codebook ({codebook}) in the state_dict")

    ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    if not levels:
        raise ArchitectureError("no encoder.down.* blocks")
    num_res_blocks = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    ch_mult = [int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // int(ch) for i in levels]
    attn_levels = _indices(keys, r"encoder\.down\.(\d+)\.attn\.0\.")
    embed_dim, z_channels = sd["quant_conv.weight"].shape[:2]
    double_z = int(sd["encoder.conv_out.weight"].shape[0]) == 2 * int(z_channels)
    resolution = max(256, 2 ** (len(levels) - 1))
    ddconfig = dict(double_z=double_z, z_channels=int(z_channels), resolution=resolution,
                    in_channels=int(in_channels), out_ch=int(sd["decoder.conv_out.weight"].shape[0]),
                    ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                    attn_resolutions=[resolution // 2 ** i for i in attn_levels], dropout=0.0)
    cfg = {"kind": "stage2" if stage2 else "stage1", "ddconfig": ddconfig,
           "n_embed": int(sd[codebook].shape[0]), "embed_dim": int(embed_dim)}
    if stage2:
        cfg.update(use_residual=True,
                   use_conv="model_x2y.blocks.0.res_block.conv1.weight" in sd,
                   use_selfatt="model_x2y.blocks.0.self_attn_block.q.weight" in sd,
                   block_num=len(_indices(keys, r"model_x2y\.blocks\.(\d+)\.")))
    return check_config(cfg, "inferred config")


# -- the official YAML -------------------------------------------------------------------------------
MODEL_TARGETS = {"taming.models.vqgan.VQModel": "stage1", "taming.models.vqgan_ref.VQModel_Ref": "stage2"}
LOSS_TARGETS = {"stage1": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                "stage2": "taming.modules.losses.vqperceptual_ref.VQLPIPS_Ref"}
# model.params each official constructor accepts: -> model config | what the checkpoint layer loads |
# no effect on the network or its training here (logging / visualisation / index layout)
_COMMON_PARAMS = {"ddconfig", "lossconfig", "n_embed", "embed_dim", "ckpt_path", "ignore_keys", "colorize_nlabels",
                  "monitor", "remap", "sane_index_shape"}
MODEL_PARAMS = {
    "stage1": _COMMON_PARAMS | {"image_key", "use_quantize", "freeze_decoder", "ckpt_quantize"},
    # block_num: the official StyleTransferModule's argument (VQModel_Ref fixes it to 6), for small models
    "stage2": _COMMON_PARAMS | {"image_key1", "image_key2", "checkpoint_encoder", "checkpoint_decoder",
                                "use_residual", "use_conv", "use_selfatt", "block_num"},
}
STAGE2_ONLY = MODEL_PARAMS["stage2"] - MODEL_PARAMS["stage1"]
MODEL_CONFIG_KEYS = {"stage1": ("use_quantize",), "stage2": ("use_residual", "use_conv", "use_selfatt", "block_num")}
LOSS_PARAMS = {
    "stage1": {"disc_start", "codebook_weight", "pixelloss_weight", "disc_num_layers", "disc_in_channels",
               "disc_factor", "disc_weight", "perceptual_weight", "use_actnorm", "disc_conditional", "disc_ndf",
               "disc_loss"},
    "stage2": {"disc_start", "codebook1_weight", "codebook2_weight", "G_step", "disc_num_layers",
               "disc_in_channels", "disc_factor", "disc_weight", "reverse_weight", "style_weight", "use_actnorm",
               "disc_conditional", "disc_ndf", "disc_loss"},
}
TOP_KEYS = {"model", "data", "lightning"}
MODEL_KEYS = {"base_learning_rate", "target", "params"}


@dataclass
class OfficialConfig:
    """An official configs/*.yaml, translated.

    model: the model config (`model.config` form, with "kind"); loss: lossconfig.params (official names);
    base_lr: model.base_learning_rate or None; checkpoint_encoder / checkpoint_decoder: the Stage 1
    checkpoints of a Stage 2 model; ckpt_path / ignore_keys: the official weight initialisation;
    data: data.params as written (checked by quantart.data); source: where it came from.
    """

    model: dict
    loss: dict = field(default_factory=dict)
    base_lr: float | None = None
    checkpoint_encoder: str | None = None
    checkpoint_decoder: str | None = None
    ckpt_path: str | None = None
    ignore_keys: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    source: str = "config"

    @property
    def kind(self) -> str:
        """"stage1" or "stage2"."""
        return self.model["kind"]


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ArchitectureError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _kind(model: dict, params: dict, loss_target: str, where: str) -> str:
    target = model.get("target")
    if target is not None:
        if target not in MODEL_TARGETS:
            raise ArchitectureError(f"{where}: model.target {target!r} is not an official QuantArt model "
                                    f"({', '.join(MODEL_TARGETS)})")
        return MODEL_TARGETS[target]
    if any(k in params for k in STAGE2_ONLY) or loss_target == LOSS_TARGETS["stage2"]:
        return "stage2"
    return "stage1"


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ArchitectureError(f"{where} must be true or false, got {value!r}")
    return value


def translate_official(raw, source: str = "config") -> OfficialConfig:
    """Translate a parsed official config (the dict of a configs/*.yaml) exactly as the official
    constructors read it. Raises ArchitectureError (one line naming the key) for unknown or misspelt
    keys, a foreign model/loss target, a missing ddconfig / n_embed / embed_dim, or an official
    option this implementation does not support (remap, freeze_decoder)."""
    raw = _mapping(raw, source)
    for key in raw:
        if key not in TOP_KEYS:
            raise ArchitectureError(f"{source}: unknown top-level key {key!r} ({suggest(key, TOP_KEYS)})")
    if "model" not in raw:
        raise ArchitectureError(f"{source}: expected the official config shape (model.params, data.params)")
    model = _mapping(raw["model"], f"{source}: model")
    for key in model:
        if key not in MODEL_KEYS:
            raise ArchitectureError(f"{source}: unknown key model.{key} ({suggest(key, MODEL_KEYS)})")
    params = _mapping(model.get("params"), f"{source}: model.params")
    lossconfig = _mapping(params.get("lossconfig"), f"{source}: model.params.lossconfig")
    for key in lossconfig:
        if key not in ("target", "params"):
            raise ArchitectureError(f"{source}: unknown key model.params.lossconfig.{key} "
                                    f"({suggest(key, ('target', 'params'))})")
    kind = _kind(model, params, str(lossconfig.get("target", "")), source)
    for key in params:
        if key not in MODEL_PARAMS[kind]:
            raise ArchitectureError(f"{source}: unknown key model.params.{key} for a {kind} model "
                                    f"({suggest(key, MODEL_PARAMS[kind])})")
    for key in ("ddconfig", "n_embed", "embed_dim"):
        if key not in params:
            raise ArchitectureError(f"{source}: model.params lacks {key!r} (the official constructor requires it)")
    if params.get("remap") is not None:
        raise ArchitectureError(f"{source}: model.params.remap (codebook index remapping) is not supported")
    if params.get("freeze_decoder"):
        raise ArchitectureError(f"{source}: model.params.freeze_decoder is not supported")
    loss_target = lossconfig.get("target")
    if loss_target is not None and loss_target != LOSS_TARGETS[kind]:
        raise ArchitectureError(f"{source}: model.params.lossconfig.target {loss_target!r} is not the {kind} "
                                f"loss ({LOSS_TARGETS[kind]})")
    loss = dict(_mapping(lossconfig.get("params"), f"{source}: model.params.lossconfig.params"))
    for key in loss:
        if key not in LOSS_PARAMS[kind]:
            raise ArchitectureError(f"{source}: unknown key model.params.lossconfig.params.{key} for the {kind} "
                                    f"loss ({suggest(key, LOSS_PARAMS[kind])})")

    cfg = {"kind": kind, "ddconfig": params["ddconfig"], "n_embed": params["n_embed"],
           "embed_dim": params["embed_dim"]}
    for key in MODEL_CONFIG_KEYS[kind]:
        if key in params:
            value = params[key]
            cfg[key] = value if key == "block_num" else _bool(value, f"{source}: model.params.{key}")
    for key in ("n_embed", "embed_dim") + (("block_num",) if "block_num" in cfg else ()):
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ArchitectureError(f"{source}: model.params.{key} must be a positive integer, got {cfg[key]!r}")
    cfg = check_config(cfg, f"{source}: model.params")
    base_lr = model.get("base_learning_rate")
    out = OfficialConfig(model=cfg, loss=loss, base_lr=None if base_lr is None else float(base_lr),
                         ckpt_path=params.get("ckpt_path"), ignore_keys=list(params.get("ignore_keys") or []),
                         data=dict(_mapping(_mapping(raw.get("data"), f"{source}: data").get("params"),
                                            f"{source}: data.params")),
                         source=source)
    if kind == "stage2":
        out.checkpoint_encoder = params.get("checkpoint_encoder")
        out.checkpoint_decoder = params.get("checkpoint_decoder")
    return out


def read_official_yaml(path) -> OfficialConfig:
    """Read and translate an official configs/*.yaml (see `translate_official`).
    Raises ArchitectureError (one line) for an unreadable file, invalid YAML or a bad config."""
    import yaml

    from quantart_runtime.util import one_line

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ArchitectureError(f"{path}: cannot read the config ({exc.strerror or one_line(exc)})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ArchitectureError(f"{path}: not valid YAML ({one_line(exc)})") from None
    return translate_official(raw, str(path))


def config_from_yaml(path) -> dict:
    """The model config (`model.config` form) of an official configs/*.yaml."""
    return read_official_yaml(path).model
