"""Dead-code restart (quantart.training.codebook, `--restart-dead-codes`): off by default; unused codes
are moved onto encoder outputs at the end of a window, used codes and their Adam moments stay, and a
short tiny training run with it uses more of its codebook than the same run without it."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from quantart.modules.quantize import VectorQuantizer
from quantart.training import apply_overrides, fit, preset
from quantart.training.codebook import DeadCodeRestart


def test_unused_codes_move_onto_latents_and_used_ones_stay():
    torch.manual_seed(0)
    q = VectorQuantizer(16, 4)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    q.embedding.weight.grad = torch.ones_like(q.embedding.weight)
    opt.step()  # Adam moments exist for every row
    before = q.embedding.weight.detach().clone()
    restart = DeadCodeRestart(q, every=2, noise=0.0)
    restart.observe(torch.tensor([0, 1, 1]))
    assert restart.maybe_restart(lambda: None, optimizer=opt) is None  # window not over: nothing happens
    restart.observe(torch.tensor([[3]]))
    latents = torch.randn(2, 4, 3, 3) * 5
    done = restart.maybe_restart(lambda: latents, optimizer=opt)
    assert done == {"codes_used": 3, "codes_restarted": 13}
    w = q.embedding.weight.detach()
    for i in (0, 1, 3):
        assert torch.equal(w[i], before[i])
        assert opt.state[q.embedding.weight]["exp_avg"][i].abs().sum() > 0
    rows = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    dead = [i for i in range(16) if i not in (0, 1, 3)]
    for i in dead:  # noise 0: each restarted code is exactly one of the batch's latents
        assert torch.isclose(rows, w[i]).all(dim=1).any()
        assert opt.state[q.embedding.weight]["exp_avg"][i].abs().sum() == 0
    assert restart.usage.sum() == 0  # a new window starts


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        DeadCodeRestart(VectorQuantizer(4, 2), every=0)


def _codes_used_by_the_end(tmp_path, restart: int) -> tuple[int, list[dict]]:
    data = tmp_path / f"data{restart}"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)).resize((24, 24)).save(data / f"{i}.png")
    spec = preset("stage1", "tiny")
    spec["model"] = dict(ddconfig=dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=8,
                                       ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
                         n_embed=64, embed_dim=8)
    spec = apply_overrides(spec, data={"folder": str(data)}, out=str(tmp_path / f"r{restart}"), size=16,
                           batch_size=4, max_steps=40, every_n_steps=40, log_every=1, image_every=0,
                           accelerator="cpu", base_lr=5e-4, restart_codes=restart,
                           loss=dict(disc_start=1000, disc_ndf=8, disc_num_layers=1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = fit(spec, progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    model = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).resize((16, 16)), dtype=np.float32))
                     for p in sorted(data.iterdir())]).permute(0, 3, 1, 2) / 127.5 - 1
    import quantart

    vq = quantart.load_model(result.last_checkpoint).eval()
    assert torch.equal(vq.quantize.embedding.weight, model["quantize.embedding.weight"])
    with torch.no_grad():
        used = len(torch.unique(vq.encode(x)[2][2]))
    rows = list(csv.DictReader(open(result.out / "logs" / "metrics.csv")))
    return used, rows


def test_training_with_restart_uses_more_codes(tmp_path):
    used_off, rows_off = _codes_used_by_the_end(tmp_path, 0)
    used_on, rows_on = _codes_used_by_the_end(tmp_path, 10)
    assert not any(r.get("train/codes_used") for r in rows_off)  # off by default: nothing logged or moved
    logged = [float(r["train/codes_used"]) for r in rows_on if r.get("train/codes_used")]
    assert len(logged) == 4  # steps 10, 20, 30, 40
    assert used_on > used_off, (used_on, used_off)
