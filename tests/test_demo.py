"""The demo's runtime half (stylize every pair, metrics, grids) on the tiny export, and the shipped demo model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from quantart.training import demo


def test_demo_stylizes_every_pair_and_reports_metrics(model_dir, assets_dir, tmp_path):
    rows = demo.stylize_pairs(model_dir, assets_dir / "content", assets_dir / "style", tmp_path, size=32)
    assert len(rows) == 16
    assert {(r["content"], r["style"]) for r in rows} == {(f"{c}.jpg", f"{s}.jpg") for c in range(1, 5)
                                                           for s in range(1, 5)}
    for r in rows:
        assert r["result_image"].shape == (32, 32, 3) and r["result_image"].dtype == np.uint8
        assert -1.0 <= r["structure_ssim"] <= 1.0
        saved = np.asarray(Image.open(tmp_path / "stylized" / r["style"][:-4] / f"{r['content'][:-4]}.png"))
        np.testing.assert_array_equal(saved, r["result_image"])
    report = demo.write_report(rows, tmp_path)
    grid = Image.open(report["grid"])
    assert grid.size == (3 * 34 + 2, 16 * 34 + 2)
    assert Image.open(report["grid_matrix"]).size == (5 * 34 + 2, 5 * 34 + 2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["pairs"]) == 16
    mean = np.mean([p["palette_gain"] for p in metrics["pairs"]])
    assert metrics["summary"]["palette_gain"]["mean"] == pytest.approx(mean)
    assert (tmp_path / "metrics.md").read_text().count("\n") == 2 + 16 + 1


@pytest.mark.skipif(not (demo.DEMO_MODEL / "config.json").is_file(), reason="no shipped demo model")
def test_shipped_demo_model_loads_with_the_demo_architecture():
    import yaml

    import quantart

    model = quantart.load_model(demo.DEMO_MODEL)
    cfg = yaml.safe_load(demo.STAGE2_CONFIG.read_text())["model"]["params"]
    assert model.config["ddconfig"]["ch_mult"] == cfg["ddconfig"]["ch_mult"]
    assert model.config["n_embed"] == cfg["n_embed"] and model.config["embed_dim"] == cfg["embed_dim"]
    stride = 2 ** (len(cfg["ddconfig"]["ch_mult"]) - 1)
    assert stride >= 8
    total = sum(p.stat().st_size for p in demo.DEMO_MODEL.iterdir() if p.is_file())
    assert total <= 20 * 2 ** 20


def test_demo_augmentation_gives_multi_scale_crops_and_flips():
    from quantart.data import ImageFolderDataset
    from quantart.data.images import augment_crop

    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    image = Image.fromarray(ramp)
    spans, flips = set(), 0
    for seed in range(40):
        out = np.asarray(augment_crop(image, 32, np.random.default_rng(seed), min_scale=0.125, flip=True))
        assert out.shape == (32, 32, 3)
        row = out[16, :, 0].astype(int)
        spans.add(abs(row[-1] - row[0]) // 32)  # horizontal extent of the crop in source pixels / 32
        flips += row[-1] < row[0]
    assert len(spans) >= 3 and 5 <= flips <= 35
    with pytest.raises(ValueError, match="min_scale"):
        augment_crop(image, 32, np.random.default_rng(0), min_scale=0.0)
    ds = ImageFolderDataset(demo.ASSETS / "content", 32, min_scale=0.25, flip=True)
    assert ds[0]["image"].shape == (3, 32, 32)


@pytest.mark.slow
def test_from_scratch_training_chains_both_stage1_phases_and_stage2(tmp_path):
    """`quantart demo --from-scratch` wiring, one step per run: each Stage 1 run starts from the previous
    one's weights (the official ckpt_path), Stage 2 takes "final" as content and "art" as art VQGAN, and the
    result loads as a StyleTransfer."""
    import torch

    import quantart

    model_dir = demo.train_demo_model(tmp_path, stage1_steps=(1, 1, 1, 1, 1), stage2_steps=1, progress=False)
    assert isinstance(quantart.load_model(model_dir), quantart.StyleTransfer)

    def spec(name):
        return torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)["quantart"]["spec"]

    last = [str(tmp_path / r[0] / "checkpoints" / "last.ckpt") for r in demo.STAGE1_RUNS]
    for (name, _, _), previous in zip(demo.STAGE1_RUNS[1:], last):
        assert spec(name)["model"]["ckpt_path"] == previous
        assert spec(name)["restart_codes"] == demo.RESTART_CODES
    assert spec("lowlr")["base_lr"] == demo.LOWLR_BASE_LR
    assert spec("art")["data"]["train"]["params"]["root"] == str(demo.ASSETS / "style")
    assert spec("stage2")["model"]["checkpoint_encoder"] == last[3]
    assert spec("stage2")["model"]["checkpoint_decoder"] == last[4]


def test_stage1_steps_flag_needs_one_count_per_run():
    assert demo.parse_steps("5,6,7,8,9") == (5, 6, 7, 8, 9)
    for bad in ("5,6", "a,b,c,d,e", "1,0,1,1,1"):
        with pytest.raises(ValueError, match="--stage1-steps needs 5"):
            demo.parse_steps(bad)
