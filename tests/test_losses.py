"""Issue 3 §2–3: both objectives match hand-computed values on fixed tensors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quantart.losses import (VQLPIPS_Ref, VQLPIPSWithDiscriminator, adopt_weight, calc_mean_std, hinge_d_loss,
                             style_loss, vanilla_d_loss)


def test_gan_pieces():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 1.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0.5 + 0) / 2 + (0.5 + 2.0) / 2))
    sp = lambda v: torch.log1p(torch.exp(torch.tensor(v)))
    exp = 0.5 * ((sp(-0.5) + sp(-2.0)) / 2 + (sp(-0.5) + sp(1.0)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(exp.item(), rel=1e-6)
    assert adopt_weight(0.8, 9, threshold=10) == 0.0 and adopt_weight(0.8, 10, threshold=10) == 0.8


def test_stage1_generator_and_discriminator_by_hand():
    torch.manual_seed(0)
    loss = VQLPIPSWithDiscriminator(disc_start=5, perceptual_weight=0.0, disc_weight=0.8, codebook_weight=2.0,
                                    disc_num_layers=1, disc_ndf=8)
    last = torch.randn(3, 3, 3, 3, requires_grad=True)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    xrec = F.conv2d(torch.randn(2, 3, 16, 16), last, padding=1)
    q = torch.tensor(0.3)
    g, log = loss(q, x, xrec, 0, 7, last_layer=last)
    nll = (x - xrec).abs().mean()
    g_adv = -loss.discriminator(xrec).mean()
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g_adv, last, retain_graph=True)[0].norm()
    dw = torch.clamp(gn / (gg + 1e-4), 0, 1e4) * 0.8
    assert g.item() == pytest.approx((nll + dw * 1.0 * g_adv + 2.0 * 0.3).item(), rel=1e-5)
    assert log["train/d_weight"].item() == pytest.approx(dw.item(), rel=1e-5)
    # before disc_start the adversarial term is off
    g0, log0 = loss(q, x, xrec, 0, 4, last_layer=last)
    assert g0.item() == pytest.approx((nll + 0.6).item(), rel=1e-6) and log0["train/disc_factor"] == 0
    d, _ = loss(q, x, xrec, 1, 7)
    exp = hinge_d_loss(loss.discriminator(x), loss.discriminator(xrec.detach()))
    assert d.item() == pytest.approx(exp.item(), rel=1e-5)
    d0, _ = loss(q, x, xrec, 1, 4)
    assert d0.item() == 0.0


def test_mean_std_and_style_loss_by_hand():
    feat = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) / 10
    mean, std = calc_mean_std(feat)
    flat = feat.reshape(2, 3, 16)
    assert torch.allclose(mean.flatten(), flat.mean(-1).flatten())
    assert torch.allclose(std.flatten(), (flat.var(-1, unbiased=True) + 1e-5).sqrt().flatten())
    other = feat.flip(-1) * 2 + 1
    m2, s2 = calc_mean_std(other)
    exp = ((mean - m2) ** 2).mean() + ((std - s2) ** 2).mean()
    assert style_loss(feat, other).item() == pytest.approx(exp.item(), rel=1e-6)


def test_stage2_by_hand():
    torch.manual_seed(0)
    loss = VQLPIPS_Ref(disc_start=0, disc_in_channels=4, disc_ndf=8, disc_weight=1.0, disc_factor=0.8,
                       style_weight=10.0, reverse_weight=1.0, codebook1_weight=1.0, G_step=2)
    q_ref, q_y, q_x = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 8, 8)
    diff = torch.tensor(0.25)
    total, ae, log = loss(diff, q_ref, q_y, q_x, 0, 4)
    rev = ((q_y - q_x) ** 2).mean()
    st = style_loss(q_y, q_ref)
    g = -loss.discriminator(q_y).mean()
    assert ae.item() == pytest.approx((rev + 0.25 + 10 * st).item(), rel=1e-6)
    assert total.item() == pytest.approx((rev + 0.25 + 10 * st + 0.8 * g).item(), rel=1e-6)
    assert log["train/style_loss"].item() == pytest.approx(st.item(), rel=1e-6)
    d, _ = loss(diff, q_ref, q_y, q_x, 1, 4)
    exp = 0.8 * hinge_d_loss(loss.discriminator(q_ref), loss.discriminator(q_y.detach()))
    assert d.item() == pytest.approx(exp.item(), rel=1e-5)
    d_odd, _ = loss(diff, q_ref, q_y, q_x, 1, 5)  # G_step 2: no discriminator loss on odd steps
    assert d_odd.item() == 0.0
