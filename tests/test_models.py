"""The models reproduce the official QuantArt code (golden cases), load official layouts,
infer architectures, and reject bad checkpoints with the documented errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import quantart
from quantart.arch import infer_config
from quantart.checkpoint import CheckpointError, read_state_dict
from quantart.models import build_model

TOL = 1e-4


def _maxdiff(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy() - b).max())


@pytest.fixture(scope="module")
def stage1(data_dir):
    return quantart.load_model(data_dir / "tiny_stage1.ckpt")


@pytest.fixture(scope="module")
def stage2(data_dir):
    return quantart.load_model(data_dir / "tiny_stage2.ckpt")


def test_stage1_golden(stage1, data_dir):
    g = np.load(data_dir / "tiny_stage1.npz")
    x = torch.from_numpy(g["input"])
    with torch.no_grad():
        quant, emb_loss, info = stage1.encode(x)
        out, diff = stage1(x)
    assert isinstance(stage1, quantart.BaseVQGAN) and not stage1.training
    assert _maxdiff(quant, g["quant"]) <= TOL
    assert np.array_equal(info[2].numpy(), g["indices"])
    assert abs(float(emb_loss) - float(g["emb_loss"])) <= TOL
    assert abs(float(diff) - float(g["emb_loss"])) <= TOL
    assert _maxdiff(out, g["output"]) <= TOL


@pytest.mark.parametrize("case", ["square", "wide"])
def test_stage2_golden(stage2, data_dir, case):
    g = np.load(data_dir / f"tiny_stage2_{case}.npz")
    x, ref = torch.from_numpy(g["content"]), torch.from_numpy(g["style"])
    with torch.no_grad():
        content_latent = stage2.content_latent(x)
        quant_x, quant_y, quant_ref, diff_x2y, indices_y, indices_ref = stage2.transfer(x, ref)
        sga_out = stage2.model_x2y(quant_x, quant_ref)
        output = stage2.decode(quant_y)
    for name, value in [("content_latent", content_latent), ("quant_x", quant_x), ("quant_ref", quant_ref),
                        ("sga_out", sga_out), ("quant_y", quant_y), ("output", output)]:
        assert _maxdiff(value, g[name]) <= TOL, name
    assert np.array_equal(indices_y.numpy(), g["indices_y"])
    assert np.array_equal(indices_ref.numpy(), g["indices_ref"])
    assert abs(float(diff_x2y) - float(g["diff_x2y"])) <= TOL


def test_fusion_ratios(stage2, data_dir):
    g = np.load(data_dir / "tiny_stage2_square.npz")
    x, ref = torch.from_numpy(g["content"]), torch.from_numpy(g["style"])
    with torch.no_grad():
        h_x = stage2.content_latent(x)
        q_x, _, _ = stage2.quantize_enc(h_x)
        quant_x, quant_y, quant_ref, *_ = stage2.transfer(x, ref, content_ratio=0.25, output_ratio=0.5)
        torch.testing.assert_close(quant_x, 0.25 * q_x + 0.75 * h_x)
        h_y = stage2.model_x2y(quant_x, quant_ref)
        q_y, _, _ = stage2.quantize_dec(h_y)
        torch.testing.assert_close(quant_y, 0.5 * q_y + 0.5 * h_y)
        # ratio 0 on both ends: fully continuous path
        _, quant_y0, *_ = stage2.transfer(x, ref, content_ratio=0.0, output_ratio=0.0)
        torch.testing.assert_close(quant_y0, stage2.model_x2y(h_x, quant_ref))


def test_style_of_another_size_serves_any_content(stage2):
    torch.manual_seed(0)
    content = torch.rand(2, 3, 32, 48) * 2 - 1
    style = torch.rand(1, 3, 40, 24) * 2 - 1
    with torch.no_grad():
        quant_ref, _, _ = stage2.encode_real(style)
        h_x = stage2.content_latent(content)
        _, quant_y, _, idx = stage2.stylize_latent(h_x, quant_ref.expand(2, -1, -1, -1))
        img = stage2.decode(quant_y)
    assert quant_ref.shape[-2:] == (10, 6) and img.shape == (2, 3, 32, 48) and idx.shape == (2, 8, 12)
    attn = stage2.model_x2y.blocks[0].attn_block
    torch.manual_seed(1)
    a = torch.randn(1, 64, 4, 6)
    b = torch.randn(1, 64, 6, 4)
    with torch.no_grad():
        out = attn(a, b)
        # the same key tokens in another order (transposed, not a reshape of the same memory) attend the same
        torch.testing.assert_close(out, attn(a, b.transpose(-1, -2)))
        # and the official formula written out: softmax(q^T k / sqrt(c)) over the key's own tokens
        gn = lambda t: F.group_norm(t, 32, attn.norm.weight, attn.norm.bias, eps=1e-6)  # noqa: E731
        conv = lambda m, t: torch.einsum("oc,bchw->bohw", m.weight[:, :, 0, 0], t) + m.bias[:, None, None]  # noqa
        q = conv(attn.q, gn(a)).flatten(2)                 # 1, c, 24
        k, v = conv(attn.k, gn(b)).flatten(2), conv(attn.v, gn(b)).flatten(2)  # 1, c, 24 (key tokens)
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / 8.0, dim=-1)
        h = torch.einsum("bij,bcj->bci", w, v).reshape(1, 64, 4, 6)
        torch.testing.assert_close(out, a + conv(attn.proj_out, h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(30, 32), (32, 2), (1, 1)])
def test_invalid_size_names_nearest(stage2, size):
    with pytest.raises(ValueError, match=r"nearest valid size is \d+x\d+"):
        stage2.content_latent(torch.zeros(1, 3, *size))


def test_nearest_index_lowest_on_ties():
    from quantart.modules.quantize import VectorQuantizer
    vq = VectorQuantizer(4, 2)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    z = torch.tensor([[[[1.0]], [[0.0]]], [[[0.0]], [[1.0]]]])  # (2, 2, 1, 1)
    zq, loss, (_, _, idx) = vq(z)
    assert idx.flatten().tolist() == [0, 1]
    torch.testing.assert_close(zq, z)
    assert float(loss.detach()) == 0.0
    torch.testing.assert_close(vq.get_codebook_entry(idx, (2, 1, 1, 2)), z)


@pytest.mark.parametrize("stage,layout", [("stage1", "official_layout_stage1_vqgan_f16_1024.json"),
                                          ("stage2", "official_layout_stage2_landscape2art.json")])
def test_official_full_size_layout_loads_strictly(data_dir, tmp_path, stage, layout):
    spec = json.loads((data_dir / layout).read_text())
    shapes = {k: tuple(v) for k, v in spec["state_dict"].items()}
    model = build_model({"kind": stage, "ddconfig": spec["ddconfig"], "n_embed": spec["n_embed"],
                         "embed_dim": spec["embed_dim"]})
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {k: s for k, s in shapes.items() if not k.startswith("loss.")}
    assert own == official
    if stage == "stage2":  # parameter counts of the design facts
        count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
        assert 28 < count(model.encoder) + count(model.quant_conv) < 30.5
        assert 41 < count(model.decoder) + count(model.post_quant_conv) < 43.5
        assert 9 < count(model.model_x2y) < 11
    # a checkpoint with exactly the official keys (loss.* included) loads and infers the architecture
    gen = torch.Generator().manual_seed(0)
    sd = {k: (torch.randn(s, generator=gen) * 0.02 if s else torch.tensor(0)) for k, s in shapes.items()}
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, path)
    loaded = quantart.load_model(path)
    assert type(loaded).__name__ == ("BaseVQGAN" if stage == "stage1" else "StyleTransfer")
    cfg = infer_config(sd)
    assert cfg["ddconfig"]["ch_mult"] == spec["ddconfig"]["ch_mult"]
    assert cfg["ddconfig"]["num_res_blocks"] == spec["ddconfig"]["num_res_blocks"]
    assert (cfg["n_embed"], cfg["embed_dim"]) == (spec["n_embed"], spec["embed_dim"])
    torch.testing.assert_close(loaded.decoder.conv_out.weight, sd["decoder.conv_out.weight"])


ARCHS = [
    dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn=[], n_embed=16, embed_dim=4, z=4, sga=dict(block_num=1)),
    dict(ch=16, ch_mult=[1, 1, 2], num_res_blocks=2, attn=[64], n_embed=32, embed_dim=8, z=8,
         sga=dict(block_num=2, use_selfatt=False)),
    dict(ch=8, ch_mult=[1, 2, 2, 4], num_res_blocks=1, attn=[256, 32], n_embed=64, embed_dim=16, z=12,
         sga=dict(block_num=3, use_conv=False)),
]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["stage1", "stage2"])
def test_architecture_inference_round_trip(arch, kind, tmp_path):
    dd = dict(double_z=False, z_channels=arch["z"], resolution=256, in_channels=3, out_ch=3, ch=arch["ch"],
              ch_mult=arch["ch_mult"], num_res_blocks=arch["num_res_blocks"], attn_resolutions=arch["attn"],
              dropout=0.0)
    cfg = {"kind": kind, "ddconfig": dd, "n_embed": arch["n_embed"], "embed_dim": arch["embed_dim"]}
    if kind == "stage2":
        cfg.update(arch["sga"])
    model = build_model(cfg)
    inferred = infer_config(model.state_dict())
    rebuilt = build_model(inferred)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert inferred["ddconfig"]["ch_mult"] == arch["ch_mult"]
    assert [256 // r for r in inferred["ddconfig"]["attn_resolutions"]] == [256 // r for r in arch["attn"]]
    if kind == "stage2":
        for key, value in arch["sga"].items():
            assert inferred[key] == value
    # plain state_dict .pt and the project's own format both round-trip with identical outputs
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    saved = quantart.save_model(model, tmp_path / "saved")
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    for path in (tmp_path / "plain.pt", saved):
        other = quantart.load_model(path)
        with torch.no_grad():
            if kind == "stage1":
                torch.testing.assert_close(other(x)[0], model.eval()(x)[0])
            else:
                torch.testing.assert_close(other.stylize(x, x), model.eval().stylize(x, x))


def test_expect_and_yaml_config(data_dir, tmp_path):
    assert isinstance(quantart.load_model(data_dir / "tiny_stage1.ckpt", expect=quantart.BaseVQGAN),
                      quantart.BaseVQGAN)
    with pytest.raises(CheckpointError, match="not a StyleTransfer"):
        quantart.load_model(data_dir / "tiny_stage1.ckpt", expect=quantart.StyleTransfer)
    cfg = infer_config(read_state_dict(data_dir / "tiny_stage2.ckpt"))
    yaml_text = f"""
model:
  target: taming.models.vqgan_ref.VQModel_Ref
  params:
    embed_dim: {cfg['embed_dim']}
    n_embed: {cfg['n_embed']}
    checkpoint_encoder: content.ckpt
    ddconfig: {json.dumps(dict(cfg['ddconfig'], resolution=32, attn_resolutions=[16]))}
    lossconfig:
      target: taming.modules.losses.vqperceptual_ref.VQLPIPS_Ref
      params: {{disc_start: 0}}
"""
    (tmp_path / "c.yaml").write_text(yaml_text)
    model = quantart.load_model(data_dir / "tiny_stage2.ckpt", config=tmp_path / "c.yaml")
    assert isinstance(model, quantart.StyleTransfer)
    assert model.config["ddconfig"]["resolution"] == 32 and model.config_source == "yaml"


def test_stage2_backbone_from_stage1_checkpoints(data_dir):
    """The checkpoint layer (not the constructor) fills a Stage 2 model from Stage 1 checkpoints."""
    from quantart.checkpoint import load_stage1_weights

    s1 = read_state_dict(data_dir / "tiny_stage1.ckpt")
    model = build_model(infer_config(read_state_dict(data_dir / "tiny_stage2.ckpt")))
    assert not torch.equal(model.decoder.conv_out.weight, s1["decoder.conv_out.weight"])
    load_stage1_weights(model, data_dir / "tiny_stage1.ckpt", data_dir / "tiny_stage1.ckpt")
    torch.testing.assert_close(model.encoder.conv_in.weight, s1["encoder.conv_in.weight"])
    torch.testing.assert_close(model.encoder_real.conv_in.weight, s1["encoder.conv_in.weight"])
    torch.testing.assert_close(model.quantize_enc.embedding.weight, s1["quantize.embedding.weight"])
    torch.testing.assert_close(model.quantize_dec.embedding.weight, s1["quantize.embedding.weight"])
    torch.testing.assert_close(model.decoder.conv_out.weight, s1["decoder.conv_out.weight"])
    with pytest.raises(CheckpointError, match=r"not a Stage 1 VQGAN checkpoint \(no 'quantize\.\*' weights\)"):
        load_stage1_weights(model, checkpoint_decoder=data_dir / "tiny_stage2.ckpt")


class Custom:  # a pickled custom class: weights_only loading must refuse it
    pass


def test_bad_checkpoints(data_dir, tmp_path):
    good = (data_dir / "tiny_stage1.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(good[: len(good) // 3])
    sd = read_state_dict(data_dir / "tiny_stage1.ckpt")
    wrong_keys = dict(sd)
    wrong_keys["encoder.extra.weight"] = torch.zeros(1)
    del wrong_keys["decoder.conv_out.bias"]
    torch.save({"state_dict": wrong_keys}, tmp_path / "wrong_keys.ckpt")
    wrong_shape = dict(sd)
    wrong_shape["post_quant_conv.bias"] = torch.zeros(7)
    torch.save(wrong_shape, tmp_path / "wrong_shape.pt")
    torch.save({"state_dict": sd, "obj": Custom()}, tmp_path / "custom.ckpt")
    (tmp_path / "notes.ckpt").write_text("these are not weights\n")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    (tmp_path / "adir").mkdir()
    cases = {
        "truncated.ckpt": "not a readable checkpoint",
        "wrong_keys.ckpt": r"missing keys: decoder\.conv_out\.bias.*unexpected keys: encoder\.extra\.weight",
        "wrong_shape.pt": r"wrong shapes: post_quant_conv\.bias \(7,\) != \(64,\)",
        "custom.ckpt": "trust",
        "notes.ckpt": r"not a readable checkpoint \(it is a text file\)",
        "dict.pt": "not a checkpoint",
        "adir": "directory without",
        "missing.ckpt": "no such file",
    }
    for name, pattern in cases.items():
        with pytest.raises(CheckpointError, match=pattern) as info:
            quantart.load_model(tmp_path / name)
        assert "\n" not in str(info.value), name
        assert len(str(info.value)) < 1200
    # the trust opt-in reads the pickled class
    model = quantart.load_model(tmp_path / "custom.ckpt", trust=True)
    assert isinstance(model, quantart.BaseVQGAN)


def test_save_model_is_atomic_and_replaces(stage1, tmp_path):
    target = quantart.save_model(stage1, tmp_path / "m")
    from safetensors.torch import load_file
    first = load_file(str(target / "model.safetensors"))
    quantart.save_model(stage1, tmp_path / "m")
    second = load_file(str(target / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
