"""quantart_export on the golden tiny Stage 2 checkpoint: fp32 + fp16 graphs against PyTorch.

The export (precision both, verification on, default profile but opt_res 64) is the session fixture
``tiny_stage2_export`` (conftest.py), shared with the runtime tests.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from export_helpers import DATA, manifest, ratio, run, session
from quantart_runtime.util import psnr_unit

GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


@pytest.fixture(scope="module")
def model():
    import quantart

    return quantart.load_model(DATA / "tiny_stage2.ckpt")


@pytest.fixture(scope="module")
def exported(tiny_stage2_export):
    return tiny_stage2_export


@pytest.fixture(scope="module")
def sessions(exported):
    return {p: {g: session(exported / (g + (".onnx" if p == "fp32" else ".fp16.onnx"))) for g in GRAPHS}
            for p in ("fp32", "fp16")}


def test_directory_and_manifest(exported, model):
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(["manifest.json", "verification",  # verification/: reference data (export/reference.py)
                            "streaming"]                       # streaming/: the segment graphs (export/segments.py)
                           + [g + ".onnx" for g in GRAPHS] + [g + ".fp16.onnx" for g in GRAPHS]
                           # every tiny-model graph attends: its fused-attention ONNX Runtime variants
                           + [g + ".ort.onnx" for g in GRAPHS] + [g + ".fp16.ort.onnx" for g in GRAPHS])
    m = manifest(exported)
    assert m["format_version"] == 1 and m["kind"] == "stage2"
    assert (m["latent_stride"], m["embed_dim"], m["n_embed"]) == (4, 64, 128)
    assert m["resolution_rule"] == {"multiple_of": 4, "min": 4}
    assert m["opset"] == 18
    assert m["profile"] == {"min_res": 4, "opt_res": 64, "max_res": 1024, "max_batch": 32}  # as the fixture asked
    assert m["source"] == {"checkpoint": "tiny_stage2.ckpt",
                           "sha256": hashlib.sha256((DATA / "tiny_stage2.ckpt").read_bytes()).hexdigest()}
    assert m["options"]["precision"] == "both" and m["options"]["verify"] is True
    assert all(m["versions"][k] for k in ("torch", "onnx", "onnxscript", "onnxruntime"))
    assert m["verification"]["passed"] is True
    assert m["verification"]["resolutions"] == ["32x32", "32x48"]
    for precision, suffix in (("fp32", ".onnx"), ("fp16", ".fp16.onnx")):
        assert sorted(m["graphs"][precision]) == sorted(GRAPHS)
        for g in GRAPHS:
            entry = m["graphs"][precision][g]
            assert entry["file"] == g + suffix and entry["precision"] == precision
            assert entry["sha256"] == hashlib.sha256((exported / entry["file"]).read_bytes()).hexdigest()
    sga = m["graphs"]["fp32"]["sga"]
    assert sga["inputs"] == [
        {"name": "content_latent", "dtype": "float32", "shape": ["batch", 64, "latent_height", "latent_width"]},
        {"name": "style_latent", "dtype": "float32",
         "shape": ["batch", 64, "style_latent_height", "style_latent_width"]},
        {"name": "content_ratio", "dtype": "float32", "shape": [1]},
        {"name": "output_ratio", "dtype": "float32", "shape": [1]}]
    assert sga["outputs"][1] == {"name": "indices", "dtype": "int64",
                                 "shape": ["batch", "latent_height", "latent_width"]}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graphs_pass_onnx_checks_with_symbolic_io(exported, precision, sessions):
    m = manifest(exported)
    for g in GRAPHS:
        entry = m["graphs"][precision][g]
        proto = onnx.load(str(exported / entry["file"]))
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        for values, specs in ((proto.graph.input, entry["inputs"]), (proto.graph.output, entry["outputs"])):
            assert [v.name for v in values] == [s["name"] for s in specs]
            for v, s in zip(values, specs):
                dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                assert dims == s["shape"]  # every batch / size dimension symbolic, nothing baked in
                want = onnx.TensorProto.INT64 if s["dtype"] == "int64" else onnx.TensorProto.FLOAT
                assert v.type.tensor_type.elem_type == want


def test_fp16_graphs_are_mixed_with_fp32_nearest_code(exported):
    """FP16 convolutions; GroupNorm (InstanceNormalization), softmax and the nearest-code pattern FP32."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(exported / "sga.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == F16 for n in convs)
    for op in ("InstanceNormalization", "Softmax", "ArgMin"):
        nodes = [n for n in proto.graph.node if n.op_type == op]
        assert nodes and all(types[n.input[0]] == F32 for n in nodes), op
    assert sum(n.op_type == "Cast" for n in proto.graph.node) > 0


def _nearest_code_patterns(proto):
    """Codebooks of the docs/model_format.md pattern: ArgMin(Sub(e_sq, Mul(MatMul(zf, Eᵀ), 2))) → Gather(E)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    found = []
    for n in proto.graph.node:
        if n.op_type != "ArgMin":
            continue
        sub = producer[n.input[0]]
        assert sub.op_type == "Sub"
        e_sq, mul = inits[sub.input[0]], producer[sub.input[1]]
        assert mul.op_type == "Mul"
        matmul = producer[mul.input[0]]
        assert matmul.op_type == "MatMul"
        e_t = inits[matmul.input[1]]
        # Gather(E, idx, axis=0); torch's index_select passes idx through Reshape(idx, [-1]) (a no-op on 1-D)
        flat = {n.output[0]} | {r.output[0] for r in proto.graph.node
                                if r.op_type == "Reshape" and r.input[0] == n.output[0]}
        gather = next(g for g in proto.graph.node if g.op_type == "Gather" and g.input[1] in flat)
        assert all(a.i == 0 for a in gather.attribute if a.name == "axis")
        e = inits[gather.input[0]]
        assert e.dtype == np.float32 and np.array_equal(e_t, e.T)
        np.testing.assert_allclose(e_sq, (e * e).sum(1), rtol=1e-5)
        found.append(e)
    return found


def test_nearest_code_subgraph_pattern(exported, model):
    (style_cb,) = _nearest_code_patterns(onnx.load(str(exported / "style_encoder.fp16.onnx")))
    np.testing.assert_array_equal(style_cb, model.quantize_dec.embedding.weight.detach().numpy())
    enc_cb, dec_cb = _nearest_code_patterns(onnx.load(str(exported / "sga.onnx")))
    np.testing.assert_array_equal(enc_cb, model.quantize_enc.embedding.weight.detach().numpy())
    np.testing.assert_array_equal(dec_cb, model.quantize_dec.embedding.weight.detach().numpy())


@pytest.mark.parametrize("batch,height,width", [(1, 32, 48), (3, 48, 32), (2, 8, 4)])
def test_every_graph_matches_pytorch_at_other_batches_and_sizes(sessions, model, batch, height, width):
    g = torch.Generator().manual_seed(batch * 1000 + height)
    x = torch.rand(batch, 3, height, width, generator=g) * 2 - 1
    ref = torch.rand(batch, 3, width, height, generator=g) * 2 - 1  # style of another shape
    with torch.no_grad():
        h_x = model.content_latent(x)
        quant_ref, _, info_ref = model.encode_real(ref)
        _, quant_y, _, idx_y = model.stylize_latent(h_x, quant_ref)
        image = model.decode(quant_y).numpy()
    s = sessions["fp32"]
    (ce,) = run(s["content_encoder"], image=x)
    assert ce.shape == tuple(h_x.shape) and np.abs(ce - h_x.numpy()).max() < 1e-4
    sl, si = run(s["style_encoder"], image=ref)
    assert si.dtype == np.int64 and si.shape == (batch, width // 4, height // 4)
    assert (si == info_ref[2].numpy()).mean() >= 0.99
    yl, yi = run(s["sga"], content_latent=h_x, style_latent=quant_ref, content_ratio=ratio(1.0),
                 output_ratio=ratio(1.0))
    assert yi.shape == (batch, height // 4, width // 4) and (yi == idx_y.numpy()).mean() >= 0.99
    (img,) = run(s["decoder"], latent=quant_y)
    assert img.shape == (batch, 3, height, width) and psnr_unit(img, image) > 60
    # FP16 graphs run on ONNX Runtime's CPU provider and stay close
    s16 = sessions["fp16"]
    (ce16,) = run(s16["content_encoder"], image=x)
    assert ce16.dtype == np.float32 and np.abs(ce16 - h_x.numpy()).max() < 0.1
    _, yi16 = run(s16["sga"], content_latent=h_x, style_latent=quant_ref, content_ratio=ratio(1.0),
                  output_ratio=ratio(1.0))
    assert (yi16 == idx_y.numpy()).mean() >= 0.95
    (img16,) = run(s16["decoder"], latent=quant_y)
    assert psnr_unit(img16, image) > 30


@pytest.mark.parametrize("content_ratio,output_ratio", [(0.5, 1.0), (1.0, 0.3), (0.7, 0.6)])
def test_sga_fusion_ratios_match_stylize_latent(sessions, model, content_ratio, output_ratio):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        h_x = model.content_latent(torch.rand(2, 3, 24, 40, generator=g) * 2 - 1)
        quant_ref, _, _ = model.encode_real(torch.rand(2, 3, 36, 20, generator=g) * 2 - 1)
        _, quant_y, _, idx = model.stylize_latent(h_x, quant_ref, content_ratio, output_ratio)
    yl, yi = run(sessions["fp32"]["sga"], content_latent=h_x, style_latent=quant_ref,
                 content_ratio=ratio(content_ratio), output_ratio=ratio(output_ratio))
    assert (yi == idx.numpy()).all()
    assert np.abs(yl - quant_y.numpy()).max() < 1e-4
    # the ratios are live inputs: a different ratio gives a different latent
    other, _ = run(sessions["fp32"]["sga"], content_latent=h_x, style_latent=quant_ref,
                   content_ratio=ratio(content_ratio), output_ratio=ratio(output_ratio / 2))
    assert np.abs(other - yl).max() > 1e-3


@pytest.mark.parametrize("case", ["square", "wide"])
def test_golden_official_outputs(sessions, case):
    """The chain of ONNX graphs reproduces the official code's golden outputs."""
    gold = np.load(DATA / f"tiny_stage2_{case}.npz")
    s = sessions["fp32"]
    (h,) = run(s["content_encoder"], image=gold["content"])
    np.testing.assert_allclose(h, gold["content_latent"], atol=1e-3)
    quant_ref, idx_ref = run(s["style_encoder"], image=gold["style"])
    assert (idx_ref == gold["indices_ref"]).mean() >= 0.999
    quant_y, idx_y = run(s["sga"], content_latent=h, style_latent=quant_ref, content_ratio=ratio(1.0),
                         output_ratio=ratio(1.0))
    assert (idx_y == gold["indices_y"]).mean() >= 0.999
    (out,) = run(s["decoder"], latent=quant_y)
    assert psnr_unit(out, gold["output"]) >= 45


def test_token_agreement_forgives_only_near_ties():
    """FP32 rounding may break an exact tie either way: a differing token counts as agreeing only when
    both codes are (nearly) equally far from the reference's continuous latent."""
    import numpy as np

    from quantart_export.verify import tie_tolerant_agreement

    codebook = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]], dtype=np.float32)
    latent = np.zeros((1, 2, 1, 4), dtype=np.float32)       # four positions, all at the origin
    latent[0, :, 0, 3] = [0.9, 0.0]                          # the last one is clearly nearest code 0
    ref = np.array([[[0, 0, 0, 0]]])
    assert tie_tolerant_agreement(ref, ref, latent, codebook)[:2] == (1.0, 0)
    tie = np.array([[[1, 0, 0, 0]]])                         # codes 0 and 1 are equally far from the origin
    assert tie_tolerant_agreement(tie, ref, latent, codebook)[:2] == (1.0, 1)
    wrong = np.array([[[2, 0, 0, 1]]])                       # code 2 (distance 9 vs 1), code 1 at 0.9 (3.61 vs 0.01)
    value, ties, gap = tie_tolerant_agreement(wrong, ref, latent, codebook)
    assert (value, ties) == (0.5, 0) and gap > 0.5
