"""Architecture configuration shared by both stages (the official `ddconfig` plus codebook sizes)."""
from __future__ import annotations

import copy

DEFAULT_DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                        ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
DEFAULT_SGA = dict(block_num=6, residual=False, use_conv=True, use_selfatt=True)


def official_config(kind: str = "stage2") -> dict:
    """The official landscape2art / VQGAN f16-1024 architecture."""
    cfg = {"kind": kind, "ddconfig": copy.deepcopy(DEFAULT_DDCONFIG), "n_embed": 1024, "embed_dim": 256}
    if kind == "stage2":
        cfg["sga"] = dict(DEFAULT_SGA)
    return cfg


def latent_stride(ddconfig: dict) -> int:
    return 2 ** (len(ddconfig["ch_mult"]) - 1)


def check_image_size(height: int, width: int, stride: int) -> None:
    """H and W must be positive multiples of the latent stride; otherwise name the nearest valid size."""
    def nearest(v):
        return max(stride, int(round(v / stride)) * stride)

    if height % stride or width % stride or height < stride or width < stride:
        raise ValueError(f"image size {height}x{width} is not a multiple of the latent stride {stride}; "
                         f"the nearest valid size is {nearest(height)}x{nearest(width)}")
