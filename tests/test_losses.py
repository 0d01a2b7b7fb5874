"""Both objectives equal the official QuantArt losses: every logged value of both optimizer
steps on the tiny checkpoints (tests/data/tiny_stage*_loss.json, computed with the official code)
within 1e-5 relative; plus hand-computed values for the pieces (no expected value is built with the
function under test)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import quantart
from quantart.checkpoint import read_state_dict, select_prefix
from quantart.losses import (
    VQLPIPS_Ref,
    VQLPIPSWithDiscriminator,
    adopt_weight,
    calc_mean_std,
    hinge_d_loss,
    style_loss,
    vanilla_d_loss,
)

REL = 1e-5


def _close(ours, official: float, name: str) -> None:
    ours = float(torch.as_tensor(ours).detach().mean())
    assert math.isclose(ours, official, rel_tol=REL, abs_tol=1e-12), f"{name}: ours {ours!r} official {official!r}"


def _check_log(log: dict, official: dict) -> None:
    assert set(log) == set(official)  # exactly the terms the official loss logs
    for key, value in official.items():
        _close(log[key], value, key)


@pytest.fixture(scope="module")
def inputs(data_dir):
    return {k: torch.from_numpy(v) for k, v in np.load(data_dir / "tiny_loss_inputs.npz").items()}


def test_stage2_loss_equals_official(data_dir, inputs):
    ref = json.loads((data_dir / "tiny_stage2_loss.json").read_text())
    model = quantart.load_model(data_dir / "tiny_stage2.ckpt")
    loss = VQLPIPS_Ref(**ref["lossconfig"])
    loss.load_state_dict(select_prefix(read_state_dict(data_dir / "tiny_stage2.ckpt"), "loss."))
    loss.train()  # as in training_step
    step = ref["global_step"]
    quant_x, quant_y, quant_ref, diff, _, _ = model.transfer(inputs["stage2_content"], inputs["stage2_style"])
    total, aeloss, log0 = loss(diff, quant_ref, quant_y, quant_x, 0, step, split="train")
    _close(total, ref["optimizer_0"]["loss"], "generator loss")
    _check_log(log0, ref["optimizer_0"]["log"])
    assert total.requires_grad and aeloss.requires_grad
    d_loss, log1 = loss(diff, quant_ref, quant_y, quant_x, 1, step, split="train")
    _close(d_loss, ref["optimizer_1"]["loss"], "discriminator loss")
    _check_log(log1, ref["optimizer_1"]["log"])


def test_stage1_loss_equals_official(data_dir, inputs):
    ref = json.loads((data_dir / "tiny_stage1_loss.json").read_text())
    model = quantart.load_model(data_dir / "tiny_stage1.ckpt").train()  # the model in train mode
    loss = VQLPIPSWithDiscriminator(**ref["lossconfig"])
    assert ref["lossconfig"]["perceptual_weight"] == 0  # no LPIPS: its VGG16 weights cannot ship
    # the file's loss.perceptual_loss.* (LPIPS head) is unused with perceptual_weight 0
    loss.discriminator.load_state_dict(select_prefix(read_state_dict(data_dir / "tiny_stage1.ckpt"),
                                                     "loss.discriminator."))
    loss.train()
    x = inputs["stage1_input"]
    step = ref["global_step"]
    xrec, qloss = model(x)
    total, log0 = loss(qloss, x, xrec, 0, step, last_layer=model.get_last_layer(), split="train")
    _close(total, ref["optimizer_0"]["loss"], "generator loss")
    _check_log(log0, ref["optimizer_0"]["log"])  # d_weight: the adaptive weight on the decoder's last layer
    d_loss, log1 = loss(qloss, x, xrec, 1, step, last_layer=model.get_last_layer(), split="train")
    _close(d_loss, ref["optimizer_1"]["loss"], "discriminator loss")
    _check_log(log1, ref["optimizer_1"]["log"])


def test_gan_pieces():
    real, fake = torch.tensor([0.5, 2.0]), torch.tensor([-0.5, 1.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * ((0.5 + 0) / 2 + (0.5 + 2.0) / 2))
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    exp = 0.5 * ((sp(-0.5) + sp(-2.0)) / 2 + (sp(-0.5) + sp(1.0)) / 2)
    assert vanilla_d_loss(real, fake).item() == pytest.approx(exp, rel=1e-6)
    assert adopt_weight(0.8, 9, threshold=10) == 0.0 and adopt_weight(0.8, 10, threshold=10) == 0.8


def test_mean_std_and_style_loss_by_hand():
    feat = np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4) / 10
    other = np.flip(feat, -1) * 2 + 1
    other[:, :, 0, 0] += 3.0  # different statistics per channel
    flat, flat2 = feat.reshape(2, 3, 16), other.reshape(2, 3, 16)
    mean, std = flat.mean(-1), np.sqrt(flat.var(-1, ddof=1) + 1e-5)
    mean2, std2 = flat2.mean(-1), np.sqrt(flat2.var(-1, ddof=1) + 1e-5)
    m, s = calc_mean_std(torch.from_numpy(feat).float())
    np.testing.assert_allclose(m.flatten().numpy(), mean.flatten(), rtol=1e-6)
    np.testing.assert_allclose(s.flatten().numpy(), std.flatten(), rtol=1e-6)
    exp = ((mean - mean2) ** 2).mean() + ((std - std2) ** 2).mean()
    got = style_loss(torch.from_numpy(feat).float(), torch.from_numpy(other.copy()).float()).item()
    assert got == pytest.approx(exp, rel=1e-5)


def test_stage2_schedules():
    """disc_start and G_step switch the adversarial terms off, as the official adopt_weight / G_step."""
    torch.manual_seed(0)
    loss = VQLPIPS_Ref(disc_start=3, disc_in_channels=4, disc_ndf=8, disc_factor=0.8, G_step=2)
    q_ref, q_y, q_x = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 8, 8)
    diff = torch.tensor(0.25)
    total, ae, log = loss(diff, q_ref, q_y, q_x, 0, 2)  # before disc_start: total == aeloss
    assert float(log["train/disc_factor"]) == 0.0 and total.item() == ae.item()
    rev = ((q_y - q_x) ** 2).mean().item()
    assert float(log["train/reverse_loss"]) == pytest.approx(rev, rel=1e-6)
    assert loss(diff, q_ref, q_y, q_x, 1, 5)[0].item() == 0.0  # odd step, G_step 2
    assert loss(diff, q_ref, q_y, q_x, 1, 4)[0].item() > 0.0


@pytest.mark.parametrize("cls", [VQLPIPS_Ref, VQLPIPSWithDiscriminator])
def test_unknown_loss_parameter_is_refused(cls):
    with pytest.raises(TypeError, match="style_wieght"):
        cls(disc_start=0, style_wieght=1.0)
