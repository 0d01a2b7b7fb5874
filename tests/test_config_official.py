"""Official configs mean what they mean.

For YAMLs of the shape of every official Stage 2 config (tiny ddconfig; those without `use_residual`
take the official default), with `use_residual` True and False: the network `quantart train` builds
from the YAML equals the one `load_model(ckpt, config=yaml)` builds (same outputs on the same weights)
and equals the official golden (tests/data/tiny_stage2_square.npz for True, tiny_stage2_noresidual.npz
for False). Unknown or misspelt keys are refused in one line naming the key.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

import quantart
from quantart.arch import ArchitectureError, read_official_yaml
from quantart.checkpoint import CheckpointError, read_state_dict
from quantart.training.config import ConfigError, from_yaml, validate
from quantart.training.runner import build_training_model

TINY_DDCONFIG = dict(double_z=False, z_channels=64, resolution=32, in_channels=3, out_ch=3, ch=32,
                     ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[16], dropout=0.0)
LOSS = dict(disc_ndf=64, disc_num_layers=0, disc_conditional=False, disc_in_channels=64, disc_start=0,
            disc_weight=1.0, disc_factor=0.8, codebook1_weight=1.0, codebook2_weight=1.0, reverse_weight=1.0,
            style_weight=10.0, G_step=1)
# the official configs/*.yaml: whether they set use_residual (all that do set True), their loss changes,
# their data section's dataset target and extra keys
OFFICIAL = {
    "art2art": dict(use_residual=True, loss={}, data="unpaired_image.UnpairedImage", extra={}),
    "coco2art": dict(use_residual=True, loss={}, data="unpaired_image.UnpairedImage", extra={}),
    "face2art": dict(use_residual=None, loss=dict(disc_factor=0.1, codebook1_weight=10.0),
                     data="unpaired_image.UnpairedImage", extra={}),
    "landscape2art": dict(use_residual=None, loss={}, data="unpaired_image.UnpairedImage",
                          extra=dict(wikiart_info2="datasets/painter-by-numbers/train_info.csv",
                                     wikiart_key2="landscape")),
    "real2real": dict(use_residual=True, loss=dict(style_weight=100.0), data="unpaired_image.UnpairedImage",
                      extra={}),
    "custom_paired": dict(use_residual=True, loss={}, data="paired_image.PairedImage", extra={}),
    "custom_unpaired": dict(use_residual=True, loss={}, data="unpaired_image.UnpairedImage", extra={}),
}


def official_yaml(name: str, stage1: str, use_residual="official") -> dict:
    """An official Stage 2 config of `name`'s shape with the tiny ddconfig; use_residual: "official"
    (as the official file: set to True, or absent), or True / False written into the file."""
    spec = OFFICIAL[name]
    params = {"checkpoint_encoder": stage1, "checkpoint_decoder": stage1, "embed_dim": 64, "n_embed": 128}
    value = spec["use_residual"] if use_residual == "official" else use_residual
    if value is not None:
        params["use_residual"] = value
    params["ddconfig"] = dict(TINY_DDCONFIG)
    params["lossconfig"] = {"target": "taming.modules.losses.vqperceptual_ref.VQLPIPS_Ref",
                            "params": {**LOSS, **spec["loss"]}}
    split = lambda s: {"target": f"taming.data.{spec['data']}{s}",  # noqa: E731
                       "params": {"folder1": "datasets/content", "folder2": "datasets/style", "size": 32,
                                  **spec["extra"]}}
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan_ref.VQModel_Ref",
                      "params": params},
            "data": {"target": "main.DataModuleFromConfig",
                     "params": {"batch_size": 8, "num_workers": 8, "train": split("Train"),
                                "validation": split("Val"), "test": split("Test")}}}


@pytest.fixture(scope="module")
def stage1_ckpt(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("stage1") / "vqgan.ckpt"
    shutil.copy(data_dir / "tiny_stage1.ckpt", path)
    return str(path)


@pytest.fixture(scope="module")
def stage1_weights(stage1_ckpt):
    return read_state_dict(stage1_ckpt)


@pytest.fixture(scope="module")
def stage2_weights(data_dir):
    return read_state_dict(data_dir / "tiny_stage2.ckpt")


def _write(tmp_path, cfg: dict, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


CASES = [(name, res) for name in OFFICIAL for res in ("official", False)] + [("landscape2art", True)]


@pytest.mark.parametrize("name,use_residual", CASES)
def test_training_network_equals_loaded_network_equals_official(name, use_residual, tmp_path, data_dir,
                                                               stage1_ckpt, stage1_weights, stage2_weights):
    path = _write(tmp_path, official_yaml(name, stage1_ckpt, use_residual))
    expected = True if use_residual == "official" else use_residual  # the official default is True
    # the network `quantart train stage2 --config` builds
    spec = validate(from_yaml("stage2", path))
    assert spec["model"]["use_residual"] is expected
    assert spec["loss"] == {**LOSS, **OFFICIAL[name]["loss"]}
    assert spec["base_lr"] == 4.5e-6 and spec["batch_size"] == 8 and spec["size"] == 32
    trained = build_training_model(spec)
    s1 = stage1_weights  # the Stage 1 weights went where the official code puts them
    torch.testing.assert_close(trained.encoder_real.conv_in.weight, s1["encoder.conv_in.weight"], rtol=0, atol=0)
    torch.testing.assert_close(trained.quantize_enc.embedding.weight, s1["quantize.embedding.weight"], rtol=0,
                               atol=0)
    trained.load_state_dict(stage2_weights, strict=True)  # loss.discriminator.* included: same loss shape
    trained.eval()
    # the network load_model builds from the same YAML
    loaded = quantart.load_model(data_dir / "tiny_stage2.ckpt", config=path)
    assert loaded.config_source == "yaml" and loaded.config["use_residual"] is expected
    assert loaded.config == trained.config
    assert trained.state_dict().keys() - loaded.state_dict().keys() == {
        k for k in stage2_weights if k.startswith("loss.")}
    golden = np.load(data_dir / ("tiny_stage2_square.npz" if expected else "tiny_stage2_noresidual.npz"))
    qx, qr = torch.from_numpy(golden["quant_x"]), torch.from_numpy(golden["quant_ref"])
    with torch.no_grad():  # the SGA (the only part the YAML's switches change) on the official latents
        ours = trained.model_x2y(qx, qr)
        torch.testing.assert_close(ours, loaded.model_x2y(qx, qr), rtol=0, atol=0)
    # Without the skips (use_residual False) float32 rounding is amplified through the six blocks: the
    # summation order of 1 vs 2 torch threads alone moves sga_out by up to 2.4e-4 (measured), with skips < 1e-5.
    np.testing.assert_allclose(ours.numpy(), golden["sga_out"], rtol=0, atol=1e-4 if expected else 1e-3)


@pytest.mark.parametrize("use_residual", [True, False])
def test_official_golden_end_to_end(use_residual, tmp_path, data_dir, stage1_ckpt):
    """load_model(ckpt, config=official YAML) reproduces the official model from images to images."""
    path = _write(tmp_path, official_yaml("art2art", stage1_ckpt, use_residual))
    model = quantart.load_model(data_dir / "tiny_stage2.ckpt", config=path)
    golden = np.load(data_dir / ("tiny_stage2_square.npz" if use_residual else "tiny_stage2_noresidual.npz"))
    x, ref = torch.from_numpy(golden["content"]), torch.from_numpy(golden["style"])
    with torch.no_grad():
        quant_x, quant_y, quant_ref, diff, indices_y, indices_ref = model.transfer(x, ref)
        output = model.decode(quant_y)
    for name, value in (("quant_x", quant_x), ("quant_ref", quant_ref), ("quant_y", quant_y), ("output", output)):
        np.testing.assert_allclose(value.numpy(), golden[name], rtol=0, atol=1e-4, err_msg=name)
    np.testing.assert_array_equal(indices_y.numpy(), golden["indices_y"])
    if "indices_ref" in golden:  # the noresidual golden omits it (same encoder as the square case)
        np.testing.assert_array_equal(indices_ref.numpy(), golden["indices_ref"])
    assert float(diff) == pytest.approx(float(golden["diff_x2y"]), rel=1e-4)


def test_use_residual_is_the_attention_skip(data_dir, stage2_weights):
    """use_residual switches the skip of every SGA attention block (not one around the module)."""
    cfg = quantart.load_model(data_dir / "tiny_stage2.ckpt").config
    on = quantart.load_model(data_dir / "tiny_stage2.ckpt", config=dict(cfg, use_residual=True))
    off = quantart.load_model(data_dir / "tiny_stage2.ckpt", config=dict(cfg, use_residual=False))
    blocks_on = [m for m in on.model_x2y.modules() if type(m).__name__ == "AttnBlock"]
    blocks_off = [m for m in off.model_x2y.modules() if type(m).__name__ == "AttnBlock"]
    assert len(blocks_on) == 12 and all(b.residual for b in blocks_on) and not any(b.residual for b in blocks_off)
    torch.manual_seed(0)
    x, key = torch.randn(1, 64, 4, 4), torch.randn(1, 64, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(blocks_on[1](x, key) - x, blocks_off[1](x, key))
        g = np.load(data_dir / "tiny_stage2_square.npz")
        qx, qr = torch.from_numpy(g["quant_x"]), torch.from_numpy(g["quant_ref"])
        assert float((on.model_x2y(qx, qr) - off.model_x2y(qx, qr)).abs().max()) > 0.1


@pytest.mark.parametrize("where,edit,key", [
    ("model.params", lambda c: c["model"]["params"].update(use_residul=False), "use_residul"),
    ("model.params", lambda c: c["model"]["params"].update(block_number=2), "block_number"),
    ("ddconfig", lambda c: c["model"]["params"]["ddconfig"].update(ch_mul=[1, 2]), "ch_mul"),
    ("lossconfig", lambda c: c["model"]["params"]["lossconfig"]["params"].update(style_wieght=1.0), "style_wieght"),
    ("model", lambda c: c["model"].update(base_learning_rat=1.0), "base_learning_rat"),
    ("top level", lambda c: c.update(modle={}), "modle"),
])
def test_unknown_or_misspelt_keys_are_refused(where, edit, key, tmp_path, data_dir, stage1_ckpt):
    cfg = official_yaml("art2art", stage1_ckpt)
    edit(cfg)
    path = _write(tmp_path, cfg)
    for call, error in ((lambda: quantart.load_model(data_dir / "tiny_stage2.ckpt", config=path), CheckpointError),
                        (lambda: from_yaml("stage2", path), ConfigError),
                        (lambda: read_official_yaml(path), ArchitectureError)):
        with pytest.raises(error, match=key) as info:
            call()
        assert "\n" not in str(info.value), where


def test_yaml_errors_are_one_line(tmp_path, data_dir, stage1_ckpt):
    cfg = official_yaml("art2art", stage1_ckpt)
    cfg["model"]["params"]["use_residual"] = "yes"
    cases = {"not_bool.yaml": (yaml.safe_dump(cfg), "use_residual must be true or false"),
             "broken.yaml": ("model: [\n", "not valid YAML"),
             "stage1.yaml": (yaml.safe_dump({"model": {"target": "taming.models.vqgan.VQModel", "params": {
                 "ddconfig": TINY_DDCONFIG, "n_embed": 128, "embed_dim": 64}}}), "a stage1 config")}
    for name, (text, pattern) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=pattern) as info:
            from_yaml("stage2", tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="holds a stage2 model but the config describes a stage1"):
        quantart.load_model(data_dir / "tiny_stage2.ckpt", config=tmp_path / "stage1.yaml")
    (tmp_path / "remap.yaml").write_text(yaml.safe_dump(
        {**cfg, "model": {**cfg["model"], "params": {**cfg["model"]["params"], "use_residual": True,
                                                      "remap": "r.npy"}}}))
    with pytest.raises(ConfigError, match="remap"):
        from_yaml("stage2", tmp_path / "remap.yaml")
