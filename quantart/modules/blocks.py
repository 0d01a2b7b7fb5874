"""Building blocks of the taming-transformers / QuantArt autoencoder, with the official names.

Parameter names match the official code exactly so official state_dicts load with strict matching.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def Normalize(in_channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (one group below 32 channels), eps 1e-6, affine."""
    groups = 32 if in_channels >= 32 else 1
    return nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=1e-6, affine=True)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """swish: x * sigmoid(x)."""
    return x * torch.sigmoid(x)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, in_channels: int, with_conv: bool = True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:  # no asymmetric padding in torch conv: pad right and bottom by hand
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
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
        h = self.conv1(nonlinearity(self.norm1(x)))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial attention. With `key`, cross-attention: k and v come from the same
    GroupNorm applied to the key tensor, which may have any spatial size (its own token count)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x, key=None):
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
        return x + self.proj_out(h_.reshape(b, c, h, w))
