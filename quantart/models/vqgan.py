"""Stage 1: BaseVQGAN — encoder, vector quantizer, decoder (official QuantArt/taming VQModel)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..modules.autoencoder import Decoder, Encoder
from ..modules.quantize import VectorQuantizer
from .config import check_image_size, latent_stride


class BaseVQGAN(nn.Module):
    """VQGAN. Images are NCHW float in [-1, 1]; H and W multiples of the latent stride."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, loss: nn.Module | None = None,
                 use_quantize: bool = True, ckpt_quantize: str | None = None, beta: float = 0.25,
                 legacy: bool = True, **ignore):
        super().__init__()
        self.config = {"kind": "stage1", "ddconfig": copy.deepcopy(dict(ddconfig)), "n_embed": n_embed,
                       "embed_dim": embed_dim, "use_quantize": use_quantize}
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta, legacy=legacy)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.loss = loss
        self.use_quantize = use_quantize
        self.stride = latent_stride(ddconfig)
        if ckpt_quantize is not None:
            self.load_quantizer(ckpt_quantize)

    def load_quantizer(self, path: str, trust: bool = False) -> None:
        """Take the codebook from another checkpoint (the official `ckpt_quantize`)."""
        from ..checkpoint import read_state_dict, select_prefix
        sd = read_state_dict(path, trust=trust)
        for prefix in ("quantize.", "quantize_dec.", "quantize_enc."):
            part = select_prefix(sd, prefix)
            if part:
                self.quantize.load_state_dict(part, strict=True)
                return
        raise ValueError(f"{path}: no quantizer weights (quantize.embedding.weight) in this checkpoint")

    def encode(self, x: torch.Tensor):
        """x → (quant, emb_loss, info) with info[2] the indices (B, h, w)."""
        check_image_size(x.shape[-2], x.shape[-1], self.stride)
        h = self.quant_conv(self.encoder(x))
        if not self.use_quantize:
            return h, torch.zeros((), device=x.device, dtype=x.dtype), (None, None, None)
        return self.quantize(h)

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, indices: torch.Tensor) -> torch.Tensor:
        b, h, w = indices.shape
        return self.decode(self.quantize.get_codebook_entry(indices, (b, h, w, self.quantize.e_dim)))

    def forward(self, x: torch.Tensor):
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    @classmethod
    def from_checkpoint(cls, path, config=None, trust: bool = False) -> "BaseVQGAN":
        from ..checkpoint import load_model
        return load_model(path, config=config, trust=trust, expect=cls)
