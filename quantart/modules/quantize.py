"""Vector quantizer (taming-transformers VectorQuantizer2) with the official legacy loss."""
from __future__ import annotations

import torch
from torch import nn


class VectorQuantizer(nn.Module):
    """Maps each latent vector to its nearest codebook row.

    distance ‖z‖² + ‖e‖² − 2 z·e, argmin with the lowest index on ties, straight-through estimator.
    Loss (legacy, official default): mean((sg[z_q] − z)²) + β · mean((z_q − sg[z])²); legacy=False
    puts β on the commitment term instead: β · mean((sg[z_q] − z)²) + mean((z_q − sg[z])²).
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, legacy: bool = True, **ignore):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def nearest_indices(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``z_flat`` (N, e_dim) (squared L2
        distance; lowest index on ties); returns (N,) int64.
        """
        e = self.embedding.weight
        d = (torch.sum(z_flat ** 2, dim=1, keepdim=True) + torch.sum(e ** 2, dim=1)
             - 2 * torch.matmul(z_flat, e.t()))
        return torch.argmin(d, dim=1)  # first minimum: lowest index on ties

    def forward(self, z: torch.Tensor):
        """z (B, C, H, W) → (z_q, loss, (perplexity, min_encodings, indices (B, H, W)))."""
        b, c, h, w = z.shape
        z_bhwc = z.permute(0, 2, 3, 1).contiguous()
        z_flat = z_bhwc.view(-1, self.e_dim)
        indices = self.nearest_indices(z_flat)
        z_q = self.embedding(indices).view(z_bhwc.shape)
        if self.legacy:
            loss = torch.mean((z_q.detach() - z_bhwc) ** 2) + self.beta * torch.mean((z_q - z_bhwc.detach()) ** 2)
        else:
            loss = self.beta * torch.mean((z_q.detach() - z_bhwc) ** 2) + torch.mean((z_q - z_bhwc.detach()) ** 2)
        z_q = z_bhwc + (z_q - z_bhwc).detach()  # straight-through
        z_q = z_q.permute(0, 3, 1, 2).contiguous()
        return z_q, loss, (None, None, indices.view(b, h, w))

    def get_codebook_entry(self, indices: torch.Tensor, shape=None) -> torch.Tensor:
        """indices → latents; with shape (B, H, W, C) the result is (B, C, H, W)."""
        z_q = self.embedding(indices.reshape(-1))
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q
