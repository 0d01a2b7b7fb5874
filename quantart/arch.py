"""Infer the architecture (ddconfig, codebook, SGA) from state_dict tensor names and shapes,
or read it from an official QuantArt YAML config."""
from __future__ import annotations

import re

from .models.config import DEFAULT_SGA


class ArchitectureError(ValueError):
    pass


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def infer_config(sd: dict) -> dict:
    """Architecture config from a (prefix-free) model state_dict: stage1 or stage2."""
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
    # Only the levels matter; express them at the official training resolution.
    resolution = max(256, 2 ** (len(levels) - 1))
    ddconfig = dict(double_z=double_z, z_channels=int(z_channels), resolution=resolution,
                    in_channels=int(in_channels), out_ch=int(sd["decoder.conv_out.weight"].shape[0]),
                    ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                    attn_resolutions=[resolution // 2 ** i for i in attn_levels], dropout=0.0)
    cfg = {"kind": "stage2" if stage2 else "stage1", "ddconfig": ddconfig,
           "n_embed": int(sd[codebook].shape[0]), "embed_dim": int(embed_dim)}
    if stage2:
        cfg["sga"] = dict(DEFAULT_SGA, block_num=len(_indices(keys, r"model_x2y\.blocks\.(\d+)\.")),
                          use_conv="model_x2y.blocks.0.res_block.conv1.weight" in sd,
                          use_selfatt="model_x2y.blocks.0.self_attn_block.q.weight" in sd)
    return cfg


def config_from_yaml(path) -> dict:
    """Architecture config from an official configs/*.yaml (model.params with ddconfig, ...)."""
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    params = (raw or {}).get("model", {}).get("params", raw or {})
    if "ddconfig" not in params:
        raise ArchitectureError(f"{path}: no model.params.ddconfig in this config")
    target = str((raw or {}).get("model", {}).get("target", ""))
    sga_keys = {k: params[k] for k in ("block_num", "residual", "use_conv", "use_selfatt") if k in params}
    sga_keys.update(params.get("sga", {}) or {})
    stage2 = bool(sga_keys) or "checkpoint_encoder" in params or "Stage2" in target or "StyleTransfer" in target \
        or "Ref" in target
    cfg = {"kind": "stage2" if stage2 else "stage1", "ddconfig": dict(params["ddconfig"]),
           "n_embed": int(params["n_embed"]), "embed_dim": int(params["embed_dim"])}
    if stage2:
        cfg["sga"] = {**DEFAULT_SGA, **sga_keys}
    return cfg
