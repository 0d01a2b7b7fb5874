"""One config layer. Each model records its full constructor configuration; config.json
(save_model) and the Lightning checkpoints training writes carry it; load_model uses a stored config when
there is one, infers from tensors only when there is none, and says which (attribute + log line)."""
from __future__ import annotations

import inspect
import json
import logging
import shutil

import pytest
import torch

import quantart
from quantart.checkpoint import CheckpointError
from quantart.models import BaseVQGAN, StyleTransfer, build_model

DD = dict(double_z=False, z_channels=8, resolution=16, in_channels=3, out_ch=3, ch=8, ch_mult=[1, 2],
          num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
STAGE1 = {"kind": "stage1", "ddconfig": DD, "n_embed": 16, "embed_dim": 4, "use_quantize": True, "beta": 0.5,
          "legacy": False}
STAGE2 = {"kind": "stage2", "ddconfig": DD, "n_embed": 16, "embed_dim": 8, "use_residual": False, "use_conv": False,
          "use_selfatt": True, "block_num": 2}


@pytest.mark.parametrize("cls", [BaseVQGAN, StyleTransfer])
def test_config_records_every_constructor_argument(cls):
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "loss")]
    cfg = build_model({"kind": cls.config_kind, "ddconfig": DD, "n_embed": 16, "embed_dim": 8}).config
    assert list(cfg) == ["kind", *params]  # nothing dropped, nothing added
    assert cfg["ddconfig"] == DD and json.loads(json.dumps(cfg)) == cfg
    # positional and keyword calls record the same; tuples become lists (JSON)
    direct = cls(dict(DD, ch_mult=(1, 2)), 16, 8)
    assert direct.config == cfg


@pytest.mark.parametrize("config", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_save_load_round_trips_the_config_exactly(config, tmp_path, caplog):
    torch.manual_seed(0)
    model = build_model(config).eval()
    assert model.config == config
    saved = quantart.save_model(model, tmp_path / "m")
    assert json.loads((saved / "config.json").read_text()) == config
    with caplog.at_level(logging.INFO, logger="quantart"):
        loaded = quantart.load_model(saved)
    assert loaded.config == config and loaded.config_source == "stored"
    assert any("config stored with it" in r.getMessage() for r in caplog.records)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        if config["kind"] == "stage1":
            assert loaded.quantize.legacy is False and loaded.quantize.beta == 0.5
            _, q_loss = model(x)
            torch.testing.assert_close(loaded(x)[1], q_loss)
        else:
            torch.testing.assert_close(loaded.stylize(x, x), model.stylize(x, x))
    # the same weights without their config.json: inferred (official defaults), and said so
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(saved / "model.safetensors", bare / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="quantart"):
        inferred = quantart.load_model(bare / "model.safetensors")
    assert inferred.config_source == "inferred"
    assert any("inferred from tensor names and shapes" in r.getMessage() for r in caplog.records)
    if config["kind"] == "stage2":  # use_residual has no tensors: only the stored config keeps False
        assert inferred.config["use_residual"] is True
        with torch.no_grad():
            assert not torch.allclose(inferred.stylize(x, x), model.stylize(x, x))
    else:
        assert inferred.config["legacy"] is True


def test_training_checkpoint_carries_the_config(tmp_path):
    from quantart.training.modules import Stage2Module

    torch.manual_seed(0)
    model = build_model(STAGE2)
    module = Stage2Module(model, learning_rate=1e-4)
    record: dict = {}
    module.on_save_checkpoint(record)  # what every Lightning checkpoint of a run gets
    torch.save({"state_dict": module.state_dict(), "global_step": 0, **record}, tmp_path / "last.ckpt")
    loaded = quantart.load_model(tmp_path / "last.ckpt")
    assert loaded.config_source == "stored" and loaded.config == STAGE2
    # an official checkpoint (no record): inferred
    torch.save({"state_dict": module.state_dict()}, tmp_path / "official.ckpt")
    assert quantart.load_model(tmp_path / "official.ckpt").config_source == "inferred"


def test_stored_configs_are_checked(tmp_path):
    model = build_model(STAGE2)
    saved = quantart.save_model(model, tmp_path / "m")
    cases = {
        "use_residul": (dict(STAGE2, use_residul=False), "unknown key 'use_residul'.*did you mean 'use_residual'"),
        "ddconfig": (dict(STAGE2, ddconfig=dict(DD, ch_mul=[1])), "ch_mul"),
        "kind": (dict(STAGE2, kind="stage3"), "unknown model kind"),
        "outer skip": ({k: v for k, v in STAGE2.items() if k not in ("use_residual", "use_conv", "use_selfatt",
                                                                      "block_num")}
                       | {"sga": {"block_num": 2, "residual": True}}, "sga.residual=True"),
    }
    for name, (cfg, pattern) in cases.items():
        (saved / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=pattern) as info:
            quantart.load_model(saved)
        assert "\n" not in str(info.value), name


def test_configs_of_older_versions_load(tmp_path):
    """quantart 0.1 wrote "sga": {..., "residual": false}: every attention block had its skip."""
    torch.manual_seed(0)
    model = build_model(dict(STAGE2, use_residual=True, use_conv=True)).eval()
    saved = quantart.save_model(model, tmp_path / "m")
    old = {"kind": "stage2", "ddconfig": DD, "n_embed": 16, "embed_dim": 8,
           "sga": {"block_num": 2, "residual": False, "use_conv": True, "use_selfatt": True}}
    (saved / "config.json").write_text(json.dumps(old))
    loaded = quantart.load_model(saved)
    assert loaded.config == model.config


def test_constructors_read_no_files():
    for cls in (BaseVQGAN, StyleTransfer):
        names = set(inspect.signature(cls.__init__).parameters)
        assert not names & {"checkpoint_encoder", "checkpoint_decoder", "ckpt_quantize", "ckpt_path", "trust"}
    # no import of the checkpoint layer from the models (no quantart.checkpoint <-> quantart.models cycle),
    # except the local import inside the thin ``from_checkpoint`` classmethods (issue 22's public names)
    import ast
    from pathlib import Path

    import quantart.models as models_pkg

    def imports_outside_from_checkpoint(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef) and child.name == "from_checkpoint":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from imports_outside_from_checkpoint(child)

    for path in Path(models_pkg.__file__).parent.glob("*.py"):
        for node in imports_outside_from_checkpoint(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "checkpoint" not in (node.module or ""), path.name
            if isinstance(node, ast.Import):
                assert not any("checkpoint" in alias.name for alias in node.names), path.name
