"""Style-Guided Attention (official name StyleTransferModule): the part Stage 2 trains.

Exactly the official `StyleTransferBlock` / `StyleTransferModule`: `residual` (the official YAML key
`use_residual`) switches the skip connection inside every attention block; there is no skip around
the module.
"""
from __future__ import annotations

from torch import nn

from .blocks import AttnBlock, ResnetBlock


class SGABlock(nn.Module):
    """ResnetBlock → self-attention → cross-attention on the style latent (official StyleTransferBlock).

    Args: in_channels (latent channels), residual (skip inside both attention blocks), use_conv (the
    ResnetBlock), use_selfatt (the self-attention block).
    """

    def __init__(self, in_channels: int, residual: bool = True, use_conv: bool = True, use_selfatt: bool = True):
        super().__init__()
        self.use_conv, self.use_selfatt = use_conv, use_selfatt
        if use_conv:
            self.res_block = ResnetBlock(in_channels=in_channels, out_channels=in_channels, dropout=0.0)
        if use_selfatt:
            self.self_attn_block = AttnBlock(in_channels, residual=residual)
        self.attn_block = AttnBlock(in_channels, residual=residual)

    def forward(self, x, ref):
        """x (B, C, H, W) content latent, ref (B, C, H', W') style latent or None → (B, C, H, W)."""
        if self.use_conv:
            x = self.res_block(x)
        if self.use_selfatt:
            x = self.self_attn_block(x)
        if ref is not None:
            x = self.attn_block(x, ref)
        return x


class SGAModule(nn.Module):
    """`block_num` SGABlocks in sequence (official StyleTransferModule; the official Stage 2 uses 6).

    Args: in_channels, block_num, residual (official `use_residual`), use_conv, use_selfatt.
    """

    def __init__(self, in_channels: int, block_num: int = 6, residual: bool = True, use_conv: bool = True,
                 use_selfatt: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(
            SGABlock(in_channels, residual=residual, use_conv=use_conv, use_selfatt=use_selfatt)
            for _ in range(block_num))

    def forward(self, x, ref):
        """Content latent x, style latent ref → stylized continuous latent (before quantization)."""
        for block in self.blocks:
            x = block(x, ref)
        return x


StyleTransferModule = SGAModule  # the official name
