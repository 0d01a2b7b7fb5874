"""LPIPS perceptual distance (VGG16 variant) with the official taming/QuantArt module names.

Keys: ``scaling_layer.shift/scale``, ``net.slice1.0.weight`` ... ``net.slice5.28.bias`` (the VGG16
feature extractor, torchvision's ``features.N`` numbering split into five slices) and
``lin0..lin4.model.1.weight`` (the linear heads). The heads come with the package
(quantart/weights/lpips_vgg_lin.pth); the ImageNet VGG16 backbone is read from a torchvision-format
file (``features.N.weight`` keys, e.g. vgg16-397923af.pth), never silently left random.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from quantart_runtime.util import one_line

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILE}"
VGG16_ENV = "QUANTART_VGG16"
LIN_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "lpips_vgg_lin.pth"
CHANNELS = (64, 128, 256, 512, 512)
# torchvision vgg16 `features`: conv widths, "M" = max-pool; indices follow torchvision's numbering.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


class VGGWeightsNotFound(FileNotFoundError):
    """No VGG16 backbone weights where LPIPS looks for them; the message says where to put them."""


def hub_vgg16_path() -> Path:
    """Where torchvision would cache the VGG16 weights (respects TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path:
    """The VGG16 weights file: `path`, else $QUANTART_VGG16, else the torch hub cache."""
    candidates = []
    if path is not None:
        candidates.append(("given path", Path(path).expanduser()))
    elif os.environ.get(VGG16_ENV):
        candidates.append((f"${VGG16_ENV}", Path(os.environ[VGG16_ENV]).expanduser()))
    else:
        candidates.append(("torch hub cache", hub_vgg16_path()))
    for _, p in candidates:
        if p.is_file():
            return p
    where = "; ".join(f"{label}: {p}" for label, p in candidates)
    raise VGGWeightsNotFound(
        f"LPIPS needs the ImageNet VGG16 weights (torchvision format, {VGG16_FILE}) and found none ({where}). "
        f"Download {VGG16_URL} to {hub_vgg16_path()}, or set {VGG16_ENV}=/path/to/{VGG16_FILE} "
        f"(CLI: --vgg-weights), or train with perceptual_weight 0 (no LPIPS)")


def _vgg16_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return layers  # indices 0..29 as torchvision's features[0:30]


class VGG16Features(nn.Module):
    """torchvision's vgg16().features[:30] as five slices returning relu1_2 ... relu5_3."""

    def __init__(self):
        super().__init__()
        layers = _vgg16_features()
        start = 0
        for i, end in enumerate(_SLICE_ENDS, 1):
            seq = nn.Sequential()
            for j in range(start, end):
                seq.add_module(str(j), layers[j])
            setattr(self, f"slice{i}", seq)
            start = end

    def load_torchvision(self, path) -> None:
        """Load `features.N.*` (or bare `N.*`) tensors from a torchvision VGG16 state_dict file."""
        path = Path(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated / not a torch file
            raise VGGWeightsNotFound(f"{path}: not a readable VGG16 weights file "
                                     f"({one_line(exc, limit=200, with_type=True)})") from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        own = {}
        for i in range(1, len(_SLICE_ENDS) + 1):
            for name, _ in getattr(self, f"slice{i}").named_parameters():
                idx, kind = name.split(".")
                own[f"slice{i}.{name}"] = (f"features.{idx}.{kind}", f"{idx}.{kind}")
        mapped, missing = {}, []
        for key, (tv_key, bare_key) in own.items():
            src = sd.get(tv_key, sd.get(bare_key)) if isinstance(sd, dict) else None
            if src is None:
                missing.append(tv_key)
            else:
                mapped[key] = src
        if missing:
            raise VGGWeightsNotFound(f"{path}: not a torchvision VGG16 state_dict (missing {', '.join(missing[:5])}"
                                     f"{' ...' if len(missing) > 5 else ''})")
        mine = self.state_dict()
        bad = [f"{k} {tuple(v.shape)} != {tuple(mine[k].shape)}" for k, v in mapped.items()
               if tuple(v.shape) != tuple(mine[k].shape)]
        if bad:
            raise VGGWeightsNotFound(f"{path}: VGG16 weights of the wrong shape: {', '.join(bad[:5])}")
        self.load_state_dict(mapped, strict=True)

    def forward(self, x):
        """x (B, 3, H, W), already scaled -> the five slice outputs (relu1_2 ... relu5_3)."""
        outs = []
        for i in range(1, 6):
            x = getattr(self, f"slice{i}")(x)
            outs.append(x)
        return outs


class ScalingLayer(nn.Module):
    """LPIPS input scaling: ``(x − shift) / scale`` with the official per-channel constants."""
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, inp):
        """inp (B, 3, H, W) in [−1, 1] -> the scaled tensor, same shape."""
        return (inp - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """A 1×1 conv head (official: Dropout then Conv, hence the key ``model.1.weight``)."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``x`` divided by its L2 norm over the channel dimension (``eps`` avoids a division by zero)."""
    norm = torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True))
    return x / (norm + eps)


class LPIPS(nn.Module):
    """Learned perceptual distance; inputs NCHW in [−1, 1]; output (B, 1, 1, 1).

    vgg_weights: torchvision-format VGG16 file (default: $QUANTART_VGG16 or the torch hub cache);
    a missing file raises VGGWeightsNotFound. pretrained=False builds the layout only (random
    backbone and heads; for loading a full checkpoint's ``loss.perceptual_loss.*`` afterwards).
    The module is frozen and always stays in eval mode (its dropout never runs).
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None, pretrained: bool = True,
                 use_dropout: bool = True):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = CHANNELS
        self.net = VGG16Features()
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c, use_dropout=use_dropout))
        if pretrained:
            self.net.load_torchvision(find_vgg16_weights(vgg_weights))
            self.load_heads(LIN_WEIGHTS)
        for p in self.parameters():
            p.requires_grad = False
        super().train(False)

    def load_heads(self, path) -> None:
        """Load the ``lin0..lin4`` linear heads from the state_dict file ``path``.

        Raises ``ValueError`` when a head is missing; ``OSError``/unpickling errors on an unreadable file.
        """
        sd = torch.load(path, map_location="cpu", weights_only=True)
        heads = {k: v for k, v in sd.items() if k.startswith("lin")}
        missing = self.load_state_dict(heads, strict=False).missing_keys
        missing = [k for k in missing if k.startswith("lin")]
        if missing:
            raise ValueError(f"{path}: LPIPS heads missing {', '.join(missing)}")

    def train(self, mode: bool = True):
        """Always eval mode, whatever ``mode`` (the loss network is frozen); returns ``self``."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Perceptual distance of ``input`` and ``target`` (B, 3, H, W) in [−1, 1]; returns (B, 1, 1, 1)."""
        outs0 = self.net(self.scaling_layer(input))
        outs1 = self.net(self.scaling_layer(target))
        val = None
        for kk in range(len(self.chns)):
            diff = (normalize_tensor(outs0[kk]) - normalize_tensor(outs1[kk])) ** 2
            res = getattr(self, f"lin{kk}").model(diff).mean([2, 3], keepdim=True)
            val = res if val is None else val + res
        return val
