"""Style-Guided Attention (official name StyleTransferModule): the part Stage 2 trains."""
from __future__ import annotations

from torch import nn

from .blocks import AttnBlock, ResnetBlock


class SGABlock(nn.Module):
    """ResnetBlock → self-attention → cross-attention on the style latent."""

    def __init__(self, in_channels: int, use_conv: bool = True, use_selfatt: bool = True, dropout: float = 0.0):
        super().__init__()
        self.use_conv, self.use_selfatt = use_conv, use_selfatt
        if use_conv:
            self.res_block = ResnetBlock(in_channels=in_channels, out_channels=in_channels, dropout=dropout)
        if use_selfatt:
            self.self_attn_block = AttnBlock(in_channels)
        self.attn_block = AttnBlock(in_channels)

    def forward(self, x, ref):
        if self.use_conv:
            x = self.res_block(x)
        if self.use_selfatt:
            x = self.self_attn_block(x)
        return self.attn_block(x, ref)


class SGAModule(nn.Module):
    def __init__(self, in_channels: int, block_num: int = 6, residual: bool = False, use_conv: bool = True,
                 use_selfatt: bool = True, dropout: float = 0.0, **ignore):
        super().__init__()
        self.residual = residual
        self.blocks = nn.ModuleList(
            SGABlock(in_channels, use_conv=use_conv, use_selfatt=use_selfatt, dropout=dropout)
            for _ in range(block_num))

    def forward(self, x, ref):
        h = x
        for block in self.blocks:
            h = block(h, ref)
        return x + h if self.residual else h


StyleTransferModule = SGAModule  # the official name
