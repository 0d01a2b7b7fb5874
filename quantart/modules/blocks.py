"""Building blocks of the taming-transformers / QuantArt autoencoder, with the official names.

Parameter names match the official code exactly so official state_dicts load with strict matching.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (one group below 32 channels), eps 1e-6, affine."""
    groups = 32 if in_channels >= 32 else 1
    return nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """swish: x * sigmoid(x)."""
    return x * torch.sigmoid(x)


class Upsample(nn.Module):
    """×2 nearest-neighbour upsampling, then a 3×3 conv when ``with_conv``."""
    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        """x (B, C, H, W) -> (B, C, 2H, 2W)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """×2 downsampling: a stride-2 3×3 conv on the input padded by one on the right and bottom
    (``with_conv``, the official asymmetric padding) or 2×2 average pooling.
    """
    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:  # no asymmetric padding in torch conv: pad right and bottom by hand
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        """x (B, C, H, W) -> (B, C, H/2, W/2) (H, W even)."""
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """Pre-activation residual block: GroupNorm, swish, 3×3 conv (twice, with dropout before the second);
    a 1×1 (or 3×3 with ``conv_shortcut``) conv on the skip when the channel count changes.
    """
    def __init__(self, *, in_channels: int, out_channels: int | None = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: int = 0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x, temb=None):
        """x (B, in_channels, H, W) -> (B, out_channels, H, W); ``temb`` (B, temb_channels) is added
        after the first conv when given (unused by QuantArt).
        """
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial attention. With `key`, cross-attention: k and v come from the same
    GroupNorm applied to the key tensor, which may have any spatial size (its own token count).

    residual: the official `AttnBlock(residual=...)`: True returns x + proj_out(h) (the skip of every
    attention block, the official default), False returns proj_out(h) alone (the official
    `use_residual: False` SGA blocks).
    """

    def __init__(self, in_channels: int, residual: bool = True):
        super().__init__()
        self.in_channels = in_channels
        self.residual = bool(residual)
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x, key=None):
        """Self-attention over the positions of ``x`` (B, C, H, W), or cross-attention to ``key``
        (B, C, h, w) when given; returns (B, C, H, W).
        """
        h_ = self.norm(x)
        kv = h_ if key is None else self.norm(key)
        q, k, v = self.q(h_), self.k(kv), self.v(kv)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)        # b, hw_q, c
        k = k.reshape(b, c, -1)                            # b, c, hw_k
        attn = torch.bmm(q, k) * (int(c) ** (-0.5))        # b, hw_q, hw_k
        attn = F.softmax(attn.float(), dim=2).to(q.dtype)  # softmax statistics in FP32
        v = v.reshape(b, c, -1)                            # b, c, hw_k
        h_ = torch.bmm(v, attn.permute(0, 2, 1))           # b, c, hw_q
        h_ = self.proj_out(h_.reshape(b, c, h, w))
        return x + h_ if self.residual else h_
