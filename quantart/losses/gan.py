"""GAN pieces shared by both stages' objectives (official taming/QuantArt functions)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.discriminator import NLayerDiscriminator, weights_init


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """`value` before `threshold` steps, `weight` from then on (switches the discriminator on)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 · (mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))), the official hinge loss."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 · (mean(softplus(−D(real))) + mean(softplus(D(fake)))), the official vanilla GAN loss."""
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def d_loss_fn(name: str):
    """The discriminator loss named `name` ("hinge" | "vanilla"); ValueError for another name."""
    if name not in D_LOSSES:
        raise ValueError(f"unknown GAN loss {name!r} (expected 'hinge' or 'vanilla')")
    return D_LOSSES[name]


class PatchGANLoss(nn.Module):
    """What both stages' objectives share: the PatchGAN (n_layers=0: Stage 2's latent discriminator,
    initialised as taming), its switch-on step and weights, and the discriminator's loss."""

    def __init__(self, disc_start: int, disc_in_channels: int, disc_num_layers: int, use_actnorm: bool,
                 disc_ndf: int, disc_factor: float, disc_weight: float, disc_loss: str, disc_conditional: bool):
        super().__init__()
        if disc_conditional:
            raise ValueError("disc_conditional=True is not supported (unused by QuantArt)")
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm, ndf=disc_ndf)
        self.discriminator.apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss_name = disc_loss
        self.disc_loss = d_loss_fn(disc_loss)
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight

    def disc_factor_at(self, global_step: int) -> float:
        """disc_factor from `disc_start` steps on, 0 before (the official adopt_weight)."""
        return adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, disc_factor, split: str):
        """→ (d_loss, log) on detached real / fake inputs."""
        logits_real = self.discriminator(real.contiguous().detach())
        logits_fake = self.discriminator(fake.contiguous().detach())
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {f"{split}/disc_loss": d_loss.detach().mean(),
               f"{split}/logits_real": logits_real.detach().mean(),
               f"{split}/logits_fake": logits_fake.detach().mean()}
        return d_loss, log
