"""Stage 2 objective: the official QuantArt VQLPIPS_Ref, on latents (not pixels).

With inputs = quant_ref (style latent), reconstructions = quant_y (stylized latent) and
quant = quant_x (content latent), as the official StyleTransfer passes them:
  reverse (content) loss  MSE(quant_y, quant_x)
  style loss              MSE(mean_c(quant_y), mean_c(quant_ref)) + MSE(std_c(quant_y), std_c(quant_ref)),
                          std = sqrt(var + 1e-5) over each channel's positions (unbiased var)
  generator               reverse_weight·reverse + codebook1_weight·codebook + style_weight·style
                          + disc_weight·disc_factor·(−mean(D(quant_y)))   (fixed weight, no adaptive one)
  discriminator           disc_factor·hinge(D(quant_ref), D(sg[quant_y])), disc_factor 0 on steps
                          that are not multiples of G_step and before disc_start.
The latent discriminator has in_channels = embed_dim and n_layers 0 in the official configs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .gan import PatchGANLoss


def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5):
    """Per-sample, per-channel mean and std = sqrt(var + eps) of (N, C, H, W) features."""
    if feat.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) features, got shape {tuple(feat.shape)}")
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    std = (flat.var(dim=2) + eps).sqrt().view(n, c, 1, 1)
    mean = flat.mean(dim=2).view(n, c, 1, 1)
    return mean, std


def content_loss(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE(input, sg[target]) (the official calc_content_loss); ValueError when the shapes differ."""
    if input.shape != target.shape:
        raise ValueError(f"content loss: shapes differ {tuple(input.shape)} vs {tuple(target.shape)}")
    return F.mse_loss(input, target.detach())


def style_loss(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Channel statistics loss (AdaIN-style); spatial sizes may differ, batch and channels may not."""
    if input.shape[:2] != target.shape[:2]:
        raise ValueError(f"style loss: batch/channels differ {tuple(input.shape)} vs {tuple(target.shape)}")
    in_mean, in_std = calc_mean_std(input)
    t_mean, t_std = calc_mean_std(target.detach())
    return F.mse_loss(in_mean, t_mean) + F.mse_loss(in_std, t_std)


class VQLPIPS_Ref(PatchGANLoss):
    """Official parameters (lossconfig.params): disc_start, codebook1_weight, codebook2_weight (unused,
    as in the official code), G_step, disc_num_layers, disc_in_channels, disc_factor, disc_weight,
    reverse_weight, style_weight, disc_ndf, disc_loss."""

    def __init__(self, disc_start: int = 0, codebook1_weight: float = 1.0, codebook2_weight: float = 1.0,
                 G_step: int = 1, disc_num_layers: int = 0, disc_in_channels: int = 256,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, reverse_weight: float = 1.0,
                 style_weight: float = 10.0, use_actnorm: bool = False, disc_conditional: bool = False,
                 disc_ndf: int = 64, disc_loss: str = "hinge"):
        super().__init__(disc_start, disc_in_channels, disc_num_layers, use_actnorm, disc_ndf, disc_factor,
                         disc_weight, disc_loss, disc_conditional)
        if G_step < 1:
            raise ValueError(f"G_step must be >= 1, got {G_step}")
        self.codebook1_weight = codebook1_weight
        self.codebook2_weight = codebook2_weight
        self.reverse_weight = reverse_weight
        self.style_weight = style_weight
        self.G_step = G_step

    def forward(self, codebook1_loss, inputs, reconstructions, quant, optimizer_idx: int, global_step: int,
                split: str = "train"):
        """inputs = quant_ref, reconstructions = quant_y, quant = quant_x.
        → (loss, aeloss, log) for optimizer_idx 0; (d_loss, log) for 1."""
        s_loss = style_loss(reconstructions, inputs)
        reverse_loss = content_loss(reconstructions, quant)
        disc_factor = self.disc_factor_at(global_step)

        if optimizer_idx == 0:
            logits_fake = self.discriminator(reconstructions.contiguous())
            g_loss = -torch.mean(logits_fake)
            d_weight = torch.tensor(float(self.discriminator_weight), device=reconstructions.device)
            aeloss = (self.reverse_weight * reverse_loss + self.codebook1_weight * codebook1_loss.mean()
                      + self.style_weight * s_loss)
            loss = aeloss + d_weight * disc_factor * g_loss
            log = {f"{split}/total_loss": loss.detach().mean(),
                   f"{split}/quant_x2y_loss": codebook1_loss.detach().mean(),
                   f"{split}/reverse_loss": reverse_loss.detach().mean(),
                   f"{split}/style_loss": s_loss.detach().mean(),
                   f"{split}/d_weight": d_weight.detach(),
                   f"{split}/disc_factor": torch.tensor(float(disc_factor)),
                   f"{split}/g_loss": g_loss.detach().mean()}
            return loss, aeloss, log

        if optimizer_idx == 1:
            if global_step % self.G_step != 0:
                disc_factor = disc_factor * 0.0
            return self.discriminator_step(inputs, reconstructions, disc_factor, split)
        raise ValueError(f"optimizer_idx must be 0 (generator) or 1 (discriminator), got {optimizer_idx}")
