"""Stage 2: StyleTransfer — style transfer inside the frozen VQGANs' discrete latent space.

Frozen backbone: content VQGAN (encoder, quant_conv, quantize_enc) and art VQGAN (encoder_real,
quant_conv_real, quantize_dec, post_quant_conv, decoder). Trained: model_x2y (SGA).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..modules.autoencoder import Decoder, Encoder
from ..modules.quantize import VectorQuantizer
from ..modules.sga import SGAModule
from .config import DEFAULT_SGA, check_image_size, latent_stride


def fuse(quantized: torch.Tensor, continuous: torch.Tensor, ratio) -> torch.Tensor:
    """Discrete–continuous fusion: ratio · q(h) + (1 − ratio) · h; ratio 1.0 is q(h) exactly."""
    if isinstance(ratio, (int, float)) and ratio == 1.0:
        return quantized
    return ratio * quantized + (1.0 - ratio) * continuous


class StyleTransfer(nn.Module):
    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, sga: dict | None = None,
                 checkpoint_encoder: str | None = None, checkpoint_decoder: str | None = None,
                 loss: nn.Module | None = None, trust: bool = False, **ignore):
        super().__init__()
        sga = {**DEFAULT_SGA, **(sga or {})}
        self.config = {"kind": "stage2", "ddconfig": copy.deepcopy(dict(ddconfig)), "n_embed": n_embed,
                       "embed_dim": embed_dim, "sga": dict(sga)}
        self.encoder = Encoder(**ddconfig)
        self.encoder_real = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.quant_conv_real = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.quantize_enc = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quantize_dec = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.model_x2y = SGAModule(embed_dim, **sga)
        self.loss = loss
        self.stride = latent_stride(ddconfig)
        if checkpoint_encoder is not None:
            self.load_content_vqgan(checkpoint_encoder, trust=trust)
        if checkpoint_decoder is not None:
            self.load_art_vqgan(checkpoint_decoder, trust=trust)

    # -- frozen backbone from Stage 1 checkpoints -------------------------------------------
    def load_content_vqgan(self, path: str, trust: bool = False) -> None:
        """encoder, quant_conv, quantize → quantize_enc (the official `checkpoint_encoder`)."""
        self._load_parts(path, {"encoder.": self.encoder, "quant_conv.": self.quant_conv,
                                "quantize.": self.quantize_enc}, trust)

    def load_art_vqgan(self, path: str, trust: bool = False) -> None:
        """encoder → encoder_real, quant_conv → quant_conv_real, decoder, post_quant_conv,
        quantize → quantize_dec (the official `checkpoint_decoder`)."""
        self._load_parts(path, {"encoder.": self.encoder_real, "quant_conv.": self.quant_conv_real,
                                "decoder.": self.decoder, "post_quant_conv.": self.post_quant_conv,
                                "quantize.": self.quantize_dec}, trust)

    @staticmethod
    def _load_parts(path, parts: dict, trust: bool) -> None:
        from ..checkpoint import CheckpointError, load_strict, read_state_dict, select_prefix
        sd = read_state_dict(path, trust=trust)
        for prefix, module in parts.items():
            part = select_prefix(sd, prefix)
            if not part:
                raise CheckpointError(f"{path}: not a Stage 1 VQGAN checkpoint (no '{prefix}*' weights)")
            load_strict(module, part, f"{path} [{prefix}*]")

    def frozen_parameters(self):
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
        return self.quantize_enc(self.content_latent(x))

    def encode_real(self, x: torch.Tensor):
        return self.quantize_dec(self.style_latent(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
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
        quant_x, quant_y, quant_ref, diff_x2y, _, _ = self.transfer(x, ref)
        return self.decode(quant_y), diff_x2y

    def get_last_layer(self) -> torch.Tensor:
        return self.model_x2y.blocks[-1].attn_block.proj_out.weight

    @classmethod
    def from_checkpoint(cls, path, config=None, trust: bool = False) -> "StyleTransfer":
        from ..checkpoint import load_model
        return load_model(path, config=config, trust=trust, expect=cls)
