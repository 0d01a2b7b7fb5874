"""GAN pieces shared by both stages' objectives (official taming/QuantArt functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..modules.discriminator import NLayerDiscriminator, weights_init


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` before `threshold` steps, `weight` from then on (switches the discriminator on)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def d_loss_fn(name: str):
    if name not in D_LOSSES:
        raise ValueError(f"unknown GAN loss {name!r} (expected 'hinge' or 'vanilla')")
    return D_LOSSES[name]


def patch_discriminator(in_channels: int, n_layers: int, use_actnorm: bool, ndf: int) -> NLayerDiscriminator:
    """The PatchGAN both stages use (n_layers=0: Stage 2's latent discriminator), initialised as taming."""
    disc = NLayerDiscriminator(input_nc=in_channels, n_layers=n_layers, use_actnorm=use_actnorm, ndf=ndf)
    disc.apply(weights_init)
    return disc
