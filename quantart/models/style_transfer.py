"""Stage 2: StyleTransfer — style transfer inside the frozen VQGANs' discrete latent space.

Frozen backbone: content VQGAN (encoder, quant_conv, quantize_enc) and art VQGAN (encoder_real,
quant_conv_real, quantize_dec, post_quant_conv, decoder). Trained: model_x2y (SGA).
"""
from __future__ import annotations

import torch
from torch import nn

from ..modules.autoencoder import Decoder, Encoder
from ..modules.quantize import VectorQuantizer
from ..modules.sga import SGAModule
from .config import ConfigMixin, check_image_size, latent_stride, register_to_config


def fuse(quantized: torch.Tensor, continuous: torch.Tensor, ratio) -> torch.Tensor:
    """Discrete–continuous fusion: ratio · q(h) + (1 − ratio) · h; ratio 1.0 is q(h) exactly."""
    if isinstance(ratio, (int, float)) and ratio == 1.0:
        return quantized
    return ratio * quantized + (1.0 - ratio) * continuous


class StyleTransfer(ConfigMixin, nn.Module):
    """Stage 2 (official `VQModel_Ref`): frozen content and art VQGANs around the trained SGA module.

    Args (the official model.params, same names and defaults): ddconfig, n_embed, embed_dim,
    use_residual (the skip inside every SGA attention block; official default True), use_conv,
    use_selfatt, block_num (SGA blocks; the official model has 6); loss (training objective, not part of
    the config). The constructor reads no file: the Stage 1 weights (official `checkpoint_encoder` /
    `checkpoint_decoder`) are loaded by `quantart.checkpoint.load_stage1_weights`.
    """

    config_kind = "stage2"

    @register_to_config
    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, use_residual: bool = True,
                 use_conv: bool = True, use_selfatt: bool = True, block_num: int = 6,
                 loss: nn.Module | None = None):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        self.encoder_real = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.quant_conv_real = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.quantize_enc = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quantize_dec = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.model_x2y = SGAModule(embed_dim, block_num=block_num, residual=use_residual, use_conv=use_conv,
                                   use_selfatt=use_selfatt)
        self.loss = loss
        self.stride = latent_stride(ddconfig)

    # -- the parts the official checkpoint_encoder / checkpoint_decoder fill ----------------------------
    def content_vqgan_parts(self) -> dict:
        """Stage 1 key prefix → module filled from the content VQGAN (official `checkpoint_encoder`)."""
        return {"encoder.": self.encoder, "quant_conv.": self.quant_conv, "quantize.": self.quantize_enc}

    def art_vqgan_parts(self) -> dict:
        """Stage 1 key prefix → module filled from the art VQGAN (official `checkpoint_decoder`)."""
        return {"encoder.": self.encoder_real, "quant_conv.": self.quant_conv_real, "decoder.": self.decoder,
                "post_quant_conv.": self.post_quant_conv, "quantize.": self.quantize_dec}

    def frozen_parameters(self):
        """Every parameter but the SGA's (model_x2y) and the loss's: the frozen Stage 1 VQGANs."""
        for name, p in self.named_parameters():
            if not name.startswith(("model_x2y.", "loss.")):
                yield p

    # -- the pieces the exporter and the runtime use ------------------------------------------
    def content_latent(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous content latent h_x = quant_conv(encoder(x))."""
        check_image_size(x.shape[-2], x.shape[-1], self.stride)
        return self.quant_conv(self.encoder(x))

    def style_latent(self, ref: torch.Tensor) -> torch.Tensor:
        """Continuous style latent quant_conv_real(encoder_real(ref))."""
        check_image_size(ref.shape[-2], ref.shape[-1], self.stride)
        return self.quant_conv_real(self.encoder_real(ref))

    def encode(self, x: torch.Tensor):
        """Content image → quantize_enc(content latent): (quant, loss, info)."""
        return self.quantize_enc(self.content_latent(x))

    def encode_real(self, x: torch.Tensor):
        """Style image → quantize_dec(style latent): (quant, loss, info)."""
        return self.quantize_dec(self.style_latent(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        """Art-codebook latents → images (post_quant_conv, art decoder)."""
        return self.decoder(self.post_quant_conv(quant))

    def stylize_latent(self, h_x: torch.Tensor, quant_ref: torch.Tensor, content_ratio=1.0, output_ratio=1.0):
        """Content latent + quantized style latent → (sga input, quant_y, diff_x2y, indices_y)."""
        q_x, _, _ = self.quantize_enc(h_x)
        quant_x = fuse(q_x, h_x, content_ratio)
        h_y = self.model_x2y(quant_x, quant_ref)
        q_y, diff_x2y, info_y = self.quantize_dec(h_y)
        return quant_x, fuse(q_y, h_y, output_ratio), diff_x2y, info_y[2]

    def transfer(self, x: torch.Tensor, ref: torch.Tensor, content_ratio=1.0, output_ratio=1.0):
        """→ (quant_x, quant_y, quant_ref, diff_x2y, indices_y, indices_ref), as the official code.

        content_ratio / output_ratio: the paper's discrete–continuous fusion of the SGA input and
        output latents; 1.0 / 1.0 is the official (fully quantized) path.
        """
        with torch.no_grad():
            h_x = self.content_latent(x).detach()
            quant_ref, _, info_ref = self.encode_real(ref)
            quant_ref = quant_ref.detach()
        quant_x, quant_y, diff_x2y, indices_y = self.stylize_latent(h_x, quant_ref, content_ratio, output_ratio)
        return quant_x.detach(), quant_y, quant_ref, diff_x2y, indices_y, info_ref[2]

    @torch.no_grad()
    def stylize(self, x: torch.Tensor, ref: torch.Tensor, content_ratio=1.0, output_ratio=1.0) -> torch.Tensor:
        """Images in, stylized images out (NCHW in [-1, 1], not clamped)."""
        _, quant_y, *_ = self.transfer(x, ref, content_ratio, output_ratio)
        return self.decode(quant_y)

    def forward(self, x, ref):
        """(content, style) → (stylized image, codebook loss of the stylized latent)."""
        quant_x, quant_y, quant_ref, diff_x2y, _, _ = self.transfer(x, ref)
        return self.decode(quant_y), diff_x2y

    def get_last_layer(self) -> torch.Tensor:
        """The official `get_last_layer` of Stage 2: the art codebook (unused by its fixed-weight loss)."""
        return self.quantize_dec.embedding.weight
