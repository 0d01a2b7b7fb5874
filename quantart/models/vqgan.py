"""Stage 1: BaseVQGAN — encoder, vector quantizer, decoder (official QuantArt/taming VQModel)."""
from __future__ import annotations

import torch
from torch import nn

from ..modules.autoencoder import Decoder, Encoder
from ..modules.quantize import VectorQuantizer
from .config import ConfigMixin, check_image_size, latent_stride, register_to_config


class BaseVQGAN(ConfigMixin, nn.Module):
    """VQGAN (official taming `VQModel`). Images are NCHW float in [-1, 1]; H and W multiples of the
    latent stride.

    Args: ddconfig (official Encoder/Decoder config), n_embed (codebook size), embed_dim (code width),
    loss (training objective, not part of the config), use_quantize (official; False: no codebook),
    beta, legacy (the quantizer's commitment weight and loss form; 0.25 / True are the official ones).
    `model.config` records all of them but `loss` (see quantart.models.config).
    """

    config_kind = "stage1"

    @register_to_config
    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, loss: nn.Module | None = None,
                 use_quantize: bool = True, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta, legacy=legacy)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.loss = loss
        self.use_quantize = use_quantize
        self.stride = latent_stride(ddconfig)

    def encode(self, x: torch.Tensor):
        """x → (quant, emb_loss, info) with info[2] the indices (B, h, w)."""
        check_image_size(x.shape[-2], x.shape[-1], self.stride)
        h = self.quant_conv(self.encoder(x))
        if not self.use_quantize:
            return h, torch.zeros((), device=x.device, dtype=x.dtype), (None, None, None)
        return self.quantize(h)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantized latents → images."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) → images."""
        b, h, w = indices.shape
        return self.decode(self.quantize.get_codebook_entry(indices, (b, h, w, self.quantize.e_dim)))

    def forward(self, x: torch.Tensor):
        """x → (reconstruction, codebook loss), as the official forward."""
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff

    def get_last_layer(self) -> torch.Tensor:
        """The decoder's last conv weight (the adaptive GAN weight is taken on it)."""
        return self.decoder.conv_out.weight
