"""PatchGAN discriminator (taming-transformers NLayerDiscriminator) with the official names.

Stage 1 uses it on images (in_channels 3, n_layers 3); Stage 2 uses it on latents
(in_channels = embed_dim, n_layers 0). Keys: ``main.0.weight``, ``main.0.bias``, ``main.2.weight``,
``main.3.*`` (BatchNorm), ... exactly as in the official checkpoints' ``loss.discriminator.*``.
"""
from __future__ import annotations

from torch import nn


def weights_init(m: nn.Module) -> None:
    """taming's init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    name = m.__class__.__name__
    if name.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif name.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: Conv(in, ndf, 4, 2, 1) + LeakyReLU(0.2); n_layers−1 strided Conv+BN+LeakyReLU blocks;
    one stride-1 Conv+BN+LeakyReLU block; a final Conv to one logit per patch.

    The output side is input/2**max(n_layers, 1) − 2, so the input side must be at least
    3·2**max(n_layers, 1) (images: 24 for n_layers 3; latents: 6 positions for n_layers 0).
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = False):
        super().__init__()
        if use_actnorm:
            raise ValueError("use_actnorm=True is not supported (the official QuantArt configs use BatchNorm)")
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        kw, padw = 4, 1
        sequence: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=kw, stride=2, padding=padw),
                                     nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=2, padding=padw,
                                   bias=False),
                         nn.BatchNorm2d(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        nf_mult_prev, nf_mult = nf_mult, min(2 ** n_layers, 8)
        sequence += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=kw, stride=1, padding=padw, bias=False),
                     nn.BatchNorm2d(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
        sequence += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=kw, stride=1, padding=padw)]
        self.main = nn.Sequential(*sequence)
        self.n_layers = n_layers

    def min_input_size(self) -> int:
        """Smallest input side that still gives one logit: the final conv and the stride-1 block each
        take one off (so 3 are needed before them), every stride-2 conv halves."""
        return 3 * 2 ** max(self.n_layers, 1)

    def forward(self, x):
        """x (B, input_nc, H, W) -> patch logits (B, 1, h, w). Raises ``ValueError`` when H or W is
        below :meth:`min_input_size`.
        """
        if min(x.shape[-2:]) < self.min_input_size():
            raise ValueError(f"discriminator input {tuple(x.shape[-2:])} is smaller than its minimum "
                             f"{self.min_input_size()}x{self.min_input_size()} (use larger images)")
        return self.main(x)
