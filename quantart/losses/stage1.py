"""Stage 1 objective: the official taming VQLPIPSWithDiscriminator.

Generator (optimizer_idx 0): mean(|x − x̂|) + perceptual_weight·mean(LPIPS(x, x̂))
+ codebook_weight·codebook loss + d_weight·disc_factor·(−mean(D(x̂))), with the adaptive
d_weight = ‖∇_last NLL‖ / (‖∇_last G‖ + 1e-4) clamped to [0, 1e4] × disc_weight, taken on the
decoder's last layer; disc_factor is 0 before `disc_start` steps.
Discriminator (optimizer_idx 1): disc_factor · hinge (or vanilla) loss on D(x) and D(sg[x̂]).
"""
from __future__ import annotations

import torch

from ..modules.lpips import LPIPS
from .gan import PatchGANLoss


def adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """‖∇NLL‖ / (‖∇G‖ + 1e-4) on `last_layer`, clamped to [0, 1e4], detached, × disc_weight."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


class VQLPIPSWithDiscriminator(PatchGANLoss):
    """Official parameters (lossconfig.params): disc_start, codebook_weight, pixelloss_weight,
    disc_num_layers, disc_in_channels, disc_factor, disc_weight, perceptual_weight, disc_ndf,
    disc_loss ('hinge' | 'vanilla'). perceptual_weight 0 builds no LPIPS (no VGG weights needed);
    otherwise `vgg_weights` (or $QUANTART_VGG16 / the torch hub cache) must hold VGG16 (`vgg_weights` is
    ours; every other parameter is the official one, and an unknown one is a TypeError). The log holds
    exactly the official terms."""

    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 vgg_weights=None):
        super().__init__(disc_start, disc_in_channels, disc_num_layers, use_actnorm, disc_ndf, disc_factor,
                         disc_weight, disc_loss, disc_conditional)
        self.codebook_weight = codebook_weight
        self.pixel_weight = pixelloss_weight  # official: stored, not applied
        self.perceptual_weight = perceptual_weight
        if perceptual_weight > 0:
            self.perceptual_loss = LPIPS(vgg_weights=vgg_weights)

    def forward(self, codebook_loss, inputs, reconstructions, optimizer_idx: int, global_step: int,
                last_layer: torch.Tensor | None = None, split: str = "train"):
        """→ (loss, log): the generator loss for optimizer_idx 0, the discriminator loss for 1."""
        inputs, reconstructions = inputs.contiguous(), reconstructions.contiguous()
        rec_loss = torch.abs(inputs - reconstructions)
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs, reconstructions)
            rec_loss = rec_loss + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros((), device=inputs.device)
        nll_loss = torch.mean(rec_loss)
        disc_factor = self.disc_factor_at(global_step)

        if optimizer_idx == 0:
            logits_fake = self.discriminator(reconstructions)
            g_loss = -torch.mean(logits_fake)
            if last_layer is not None and torch.is_grad_enabled() and g_loss.requires_grad:
                d_weight = adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)
            else:  # validation: no graph to take gradients from (the official code uses 0 too)
                d_weight = torch.zeros((), device=inputs.device)
            loss = nll_loss + d_weight * disc_factor * g_loss
            if codebook_loss is not None:
                loss = loss + self.codebook_weight * codebook_loss.mean()
            else:
                codebook_loss = torch.zeros((), device=inputs.device)
            log = {f"{split}/total_loss": loss.detach().mean(),
                   f"{split}/quant_loss": codebook_loss.detach().mean(),
                   f"{split}/nll_loss": nll_loss.detach().mean(),
                   f"{split}/rec_loss": rec_loss.detach().mean(),
                   f"{split}/p_loss": p_loss.detach().mean(),
                   f"{split}/d_weight": d_weight.detach(),
                   f"{split}/disc_factor": torch.tensor(float(disc_factor)),
                   f"{split}/g_loss": g_loss.detach().mean()}
            return loss, log

        if optimizer_idx == 1:
            return self.discriminator_step(inputs, reconstructions, disc_factor, split)
        raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")
