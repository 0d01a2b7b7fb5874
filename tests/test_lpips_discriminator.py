"""Loss networks: the PatchGAN discriminator's and LPIPS's parameter layouts match the official
checkpoints; LPIPS loads a torchvision-format VGG16 file and refuses, with a one-line reason, to run
with a missing or unreadable one."""
from __future__ import annotations

import json

import pytest
import torch

from quantart.modules.discriminator import NLayerDiscriminator, weights_init
from quantart.modules.lpips import LPIPS, VGGWeightsNotFound, normalize_tensor


def _layout(data_dir, name, prefix):
    sd = json.loads((data_dir / name).read_text())["state_dict"]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _shapes(module):
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_discriminator_layouts_match_official(data_dir):
    s1 = _layout(data_dir, "official_layout_stage1_vqgan_f16_1024.json", "loss.discriminator.")
    s2 = _layout(data_dir, "official_layout_stage2_landscape2art.json", "loss.discriminator.")
    assert _shapes(NLayerDiscriminator(3, 64, 3)) == s1
    assert _shapes(NLayerDiscriminator(256, 64, 0)) == s2


def test_discriminator_init_and_min_size():
    torch.manual_seed(0)
    d = NLayerDiscriminator(8, 16, 0).apply(weights_init)
    w = d.main[0].weight
    assert abs(float(w.detach().std()) - 0.02) < 0.005 and torch.all(d.main[3].bias == 0)
    assert d(torch.randn(2, 8, 6, 6)).shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="smaller than its minimum"):
        d(torch.randn(2, 8, 5, 5))


def _fake_vgg(path):
    from quantart.modules.lpips import _vgg16_features
    torch.manual_seed(1)
    layers = torch.nn.Sequential(*_vgg16_features())
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, path)
    return layers


def test_lpips_layout_matches_official(data_dir):
    official = _layout(data_dir, "official_layout_stage1_vqgan_f16_1024.json", "loss.perceptual_loss.")
    assert _shapes(LPIPS(pretrained=False)) == official


def test_lpips_loads_torchvision_file(tmp_path, monkeypatch):
    vgg = _fake_vgg(tmp_path / "vgg16.pth")
    monkeypatch.delenv("QUANTART_VGG16", raising=False)
    m = LPIPS(vgg_weights=tmp_path / "vgg16.pth")
    assert torch.equal(getattr(m.net.slice5, "28").weight, vgg[28].weight)
    assert not any(p.requires_grad for p in m.parameters())
    m.train()
    assert not m.training  # always eval: no dropout in the heads
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = m(x, y)
    assert d.shape == (2, 1, 1, 1) and torch.all(d > 0) and torch.allclose(m(x, x), torch.zeros(2, 1, 1, 1))
    # hand computation of the first head for the first layer
    s = m.scaling_layer
    f0 = vgg[:4]((x - s.shift) / s.scale)
    f1 = vgg[:4]((y - s.shift) / s.scale)
    diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2
    head0 = (diff * m.lin0.model[1].weight).sum(1, keepdim=True).mean([2, 3], keepdim=True)
    assert torch.all(head0 <= d + 1e-6)
    # via the environment variable too
    monkeypatch.setenv("QUANTART_VGG16", str(tmp_path / "vgg16.pth"))
    assert torch.equal(getattr(LPIPS().net.slice1, "0").weight, vgg[0].weight)


def test_lpips_missing_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("QUANTART_VGG16", raising=False)
    with pytest.raises(VGGWeightsNotFound, match="vgg16-397923af.pth.*perceptual_weight 0"):
        LPIPS()
    with pytest.raises(VGGWeightsNotFound, match="given path"):
        LPIPS(vgg_weights=tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(VGGWeightsNotFound, match="not a torchvision VGG16"):
        LPIPS(vgg_weights=bad)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file\nsecond line\n" * 4)
    with pytest.raises(VGGWeightsNotFound, match="garbage.pth: not a readable VGG16 weights file") as info:
        LPIPS(vgg_weights=garbage)
    assert "\n" not in str(info.value)
