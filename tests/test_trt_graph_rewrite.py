"""Graph rewrite for the TensorRT backend: nearest-codebook subgraph -> quantart::nearest_code plugin.

The graphs come from the real exporter path: a tiny torch module calling
quantart_export.nearest.nearest_code, exported with torch.onnx.export(dynamo=True). The kernel
side of the equivalence check runs in a child process under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from quantart_runtime.backends import graph_rewrite as gr  # noqa: E402

D, K1, K2 = 8, 40, 70


def _export(path, two=False):
    torch = pytest.importorskip("torch")
    from quantart_export.nearest import nearest_code

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.codebook = torch.nn.Parameter(torch.randn(K1, D, generator=g))
            self.codebook2 = torch.nn.Parameter(torch.randn(K2, D, generator=g) * 1.3)
            self.proj = torch.nn.Conv2d(D, D, 1)

        def forward(self, z, ratio):
            q, idx = nearest_code(z, self.codebook, ratio)
            if not two:
                return q, idx
            q2, idx2 = nearest_code(self.proj(q), self.codebook2)
            return q2, idx, idx2

    model = Tiny().eval()
    z = torch.randn(2, D, 3, 5)
    names = ["q", "idx"] if not two else ["q2", "idx", "idx2"]
    prog = torch.onnx.export(model, (z, torch.tensor([0.7])), dynamo=True, input_names=["z", "ratio"],
                             output_names=names, dynamic_shapes={"z": {0: "batch", 2: "h", 3: "w"}, "ratio": None},
                             opset_version=18, verbose=False)
    prog.save(str(path))
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("rewrite")
    one = _export(d / "one.onnx")
    two = _export(d / "two.onnx", two=True)
    return d, one, two


def _ops(model):
    return [n.op_type for n in model.graph.node]


def test_rewrite_single_subgraph(exported):
    _, one, _ = exported
    before = one.SerializeToString()
    new, report = gr.replace_nearest_code(one)
    assert one.SerializeToString() == before          # input untouched
    assert [r.replaced for r in report] == [True]
    assert report[0].n_codes == K1 and report[0].embed_dim == D
    ops, old_ops = _ops(new), _ops(one)
    for gone in ("ArgMin", "MatMul"):
        assert gone in old_ops and gone not in ops
    assert not {"Gather", "GatherND"} & set(ops)
    assert ops.count("nearest_code") == 1 and ops.count("Cast") == old_ops.count("Cast") + 1
    # ArgMin, Sub, Mul, MatMul, Gather(ND) and its index adapter -> plugin + Cast
    assert len(ops) == len(old_ops) - len(report[0].removed_nodes) + 2 == len(old_ops) - 4
    onnx.checker.check_model(new, full_check=True)


def test_plugin_node_attributes(exported):
    _, one, _ = exported
    new, _ = gr.replace_nearest_code(one)
    (node,) = gr.plugin_nodes(new)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == "trt.plugins" and node.op_type == "nearest_code"
    assert attrs["plugin_namespace"] == b"quantart" and attrs["plugin_version"] == b"1"
    assert attrs["aot"] == 1 and attrs["embed_dim"] == D and attrs["n_codes"] == K1
    assert any(o.domain == "trt.plugins" and o.version == 1 for o in new.opset_import)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in new.graph.initializer}
    cb, sq = inits[node.input[1]], inits[node.input[2]]
    assert cb.shape == (K1, D) and cb.dtype == np.float32 and sq.shape == (K1,) and sq.dtype == np.float32
    old = {t.name: onnx.numpy_helper.to_array(t) for t in one.graph.initializer}
    assert any(v.shape == (K1, D) and np.array_equal(v, cb) for v in old.values())
    np.testing.assert_allclose(sq, (cb.astype(np.float64) ** 2).sum(1), rtol=1e-6)
    # the int64 indices the rest of the graph reads are a Cast of the plugin's int32 output
    cast = next(n for n in new.graph.node if n.input and n.input[0] == node.output[0])
    assert cast.op_type == "Cast" and onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.INT64
    assert gr.plugin_nodes(one) == []


def test_two_subgraphs_and_unused_constants_dropped(exported):
    _, _, two = exported
    new, report = gr.replace_nearest_code(two)
    assert [r.replaced for r in report] == [True, True]
    assert sorted(r.n_codes for r in report) == [K1, K2]
    assert len(gr.plugin_nodes(new)) == 2 and "ArgMin" not in _ops(new)
    used = {i for n in new.graph.node for i in n.input}
    assert all(t.name in used for t in new.graph.initializer)
    onnx.checker.check_model(new, full_check=True)


def test_non_matching_pattern_is_left_alone(exported):
    _, one, _ = exported
    m = onnx.ModelProto.FromString(one.SerializeToString())
    argmin = next(n for n in m.graph.node if n.op_type == "ArgMin")
    m.graph.output.append(onnx.helper.make_tensor_value_info(argmin.input[0], onnx.TensorProto.FLOAT, None))
    new, report = gr.replace_nearest_code(m)
    assert [r.replaced for r in report] == [False] and "Sub" in report[0].reason
    assert _ops(new) == _ops(m)
    assert [r.replaced for r in gr.find_nearest_code_subgraphs(one)] == [True]


@pytest.mark.parametrize("gather", ["Gather", "GatherND", "Gather+ReduceSum"])
def test_literal_doc_pattern_with_gather_and_transpose(gather):
    """The form docs/model_format.md spells out: Transpose(E) node, Gather(E, idx, axis=0), Constant 2
    (and the GatherND(E, Unsqueeze(idx, -1)) form torch.onnx writes for e[idx])."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    e = rng.standard_normal((5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
        helper.make_node("MatMul", ["zf", "Et"], ["dots"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node("Mul", ["two", "dots"], ["dots2"]),
        helper.make_node("Sub", ["e_sq", "dots2"], ["scores"]),
        helper.make_node("ArgMin", ["scores"], ["idx"], axis=1, keepdims=0),
    ]
    if gather == "Gather+ReduceSum":     # the TorchScript exporter leaves e_sq = ReduceSum(E*E, 1)
        nodes[4:4] = [helper.make_node("Mul", ["E", "E"], ["EE"]),
                      helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array([1], np.int64))),
                      helper.make_node("ReduceSum", ["EE", "one"], ["e_sq"], keepdims=0)]
    if gather.startswith("Gather") and gather != "GatherND":
        nodes.append(helper.make_node("Gather", ["E", "idx"], ["codes"], axis=0))
    else:
        nodes += [helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([-1], np.int64))),
                  helper.make_node("Unsqueeze", ["idx", "axes"], ["idx2"]),
                  helper.make_node("GatherND", ["E", "idx2"], ["codes"])]
    graph = helper.make_graph(
        nodes, "doc", [helper.make_tensor_value_info("zf", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("codes", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(e, "E")] +
        ([] if "ReduceSum" in gather else [numpy_helper.from_array((e * e).sum(1), "e_sq")]))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    new, report = gr.replace_nearest_code(model)
    assert report[0].replaced and _ops(new) == ["nearest_code", "Cast"]
    np.testing.assert_allclose(onnx.numpy_helper.to_array(new.graph.initializer[1]), (e * e).sum(1), rtol=1e-6)
    assert [t.name for t in new.graph.initializer] == [new.graph.node[0].input[1], new.graph.node[0].input[2]]
    onnx.checker.check_model(new, full_check=True)


@pytest.mark.parametrize("zf_shape", [["B", "N", 4], None])
def test_latents_must_be_rank_2(zf_shape):
    """The plugin takes z (N, D): a MatMul on rank-3 latents (batched), or on latents whose rank shape
    inference cannot tell, is left alone and reported."""
    from onnx import TensorProto, helper, numpy_helper

    e = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["zf", "Et"], ["dots"]),
             helper.make_node("Mul", ["dots", "two"], ["dots2"]),
             helper.make_node("Sub", ["e_sq", "dots2"], ["scores"]),
             helper.make_node("ArgMin", ["scores"], ["idx"], axis=-1, keepdims=0),
             helper.make_node("Gather", ["E", "idx"], ["codes"], axis=0)]
    graph = helper.make_graph(
        nodes, "rank", [helper.make_tensor_value_info("zf", TensorProto.FLOAT, zf_shape)],
        [helper.make_tensor_value_info("codes", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("idx", TensorProto.INT64, None)],
        [numpy_helper.from_array(e, "E"), numpy_helper.from_array(e.T.copy(), "Et"),
         numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array((e * e).sum(1), "e_sq")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    new, report = gr.replace_nearest_code(model)
    assert [r.replaced for r in report] == [False]
    assert "not rank 2" in report[0].reason and ("rank 3" if zf_shape else "unknown") in report[0].reason
    assert _ops(new) == _ops(model)
    # the same graph on (N, 4) latents is replaced
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("zf", TensorProto.FLOAT, ["N", 4]))
    assert [r.replaced for r in gr.replace_nearest_code(model)[1]] == [True]


def _child(workdir):
    """Interpreter side: the rewritten graph (plugin = the kernel) vs the original graph (onnxruntime)."""
    os.environ["TRITON_INTERPRET"] = "1"
    import onnxruntime as ort
    import torch
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    from quantart_runtime.kernels.nearest_code import launch

    class nearest_code(OpRun):  # noqa: N801 - the ONNX op name
        op_domain = "trt.plugins"

        def _run(self, z, codebook, sqnorm, plugin_namespace=None, plugin_version=None, aot=None,
                 embed_dim=None, n_codes=None):
            idx = torch.empty(z.shape[0], dtype=torch.int32)
            codes = torch.empty(z.shape, dtype=torch.float32)
            # TensorRT hands the plugin dense (linear) tensors
            z = np.ascontiguousarray(z)
            launch(torch.from_numpy(z), torch.from_numpy(codebook), torch.from_numpy(sqnorm), idx, codes)
            return idx.numpy(), codes.numpy()

    out = {}
    for name in ("one", "two"):
        original = onnx.load(os.path.join(workdir, f"{name}.onnx"))
        rewritten = onnx.load(os.path.join(workdir, f"{name}.rewritten.onnx"))
        rng = np.random.default_rng(7)
        z = rng.standard_normal((3, D, 5, 7)).astype(np.float32)
        feeds = {"z": z, "ratio": np.array([0.7], np.float32)}
        ref = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ReferenceEvaluator(rewritten, new_ops=[nearest_code]).run(None, feeds)
        out[name] = {"idx_equal": all(np.array_equal(a, b) for a, b in zip(ref[1:], got[1:])),
                     "idx_dtype": str(got[1].dtype),
                     "q_max_abs": float(np.max(np.abs(ref[0] - got[0]))),
                     "q_bitwise": bool(np.array_equal(ref[0], got[0]))}

    # The removed subgraph alone: original nodes from zf to (ArgMin, GatherND) under onnxruntime vs the kernel
    # fed the plugin's own inputs.
    original = onnx.load(os.path.join(workdir, "one.onnx"))
    rewritten = onnx.load(os.path.join(workdir, "one.rewritten.onnx"))
    argmin = next(n for n in original.graph.node if n.op_type == "ArgMin")
    gather = next(n for n in original.graph.node if n.op_type in ("Gather", "GatherND"))
    matmul = next(n for n in original.graph.node if n.op_type == "MatMul")
    sub_path = os.path.join(workdir, "subgraph.onnx")
    onnx.utils.extract_model(os.path.join(workdir, "one.onnx"), sub_path, [matmul.input[0]],
                             [argmin.output[0], gather.output[0]])
    sub = onnx.load(sub_path)
    plugin = next(n for n in rewritten.graph.node if n.op_type == "nearest_code")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    rng = np.random.default_rng(11)
    zf = (rng.standard_normal((203, D)) * 2).astype(np.float32)
    ref_idx, ref_codes = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {matmul.input[0]: zf})
    idx = torch.empty(zf.shape[0], dtype=torch.int32)
    codes = torch.empty(zf.shape, dtype=torch.float32)
    launch(torch.from_numpy(zf), torch.from_numpy(inits[plugin.input[1]]), torch.from_numpy(inits[plugin.input[2]]),
           idx, codes)
    out["subgraph"] = {"ops": sorted(n.op_type for n in sub.graph.node),
                       "idx_equal": bool(np.array_equal(ref_idx, idx.numpy())),
                       "codes_bitwise": bool(np.array_equal(ref_codes, codes.numpy()))}
    with open(os.path.join(workdir, "result.json"), "w") as f:
        json.dump(out, f)


def test_rewritten_graph_computes_what_the_original_does(exported):
    d, one, two = exported
    for name, model in (("one", one), ("two", two)):
        onnx.save(gr.replace_nearest_code(model)[0], str(d / f"{name}.rewritten.onnx"))
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__, str(d)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((d / "result.json").read_text())
    for name in ("one", "two"):
        assert res[name]["idx_equal"] and res[name]["idx_dtype"] == "int64"
        assert res[name]["q_max_abs"] <= 1e-5, res[name]
    assert res["one"]["q_bitwise"]
    # MatMul, Mul, Sub, ArgMin, then Gather(E, Reshape(idx)) (index_select) or GatherND(E, Unsqueeze(idx))
    assert res["subgraph"]["ops"] in (sorted(["MatMul", "Mul", "Sub", "ArgMin", "Reshape", "Gather"]),
                                      sorted(["MatMul", "Mul", "Sub", "ArgMin", "Unsqueeze", "GatherND"]))
    assert res["subgraph"]["idx_equal"] and res["subgraph"]["codes_bitwise"]


if __name__ == "__main__":
    _child(sys.argv[1])


MANIFEST_ENTRY = {"file": "one.onnx", "inputs": [{"name": "z", "dtype": "float32", "shape": ["batch", D, "h", "w"]},
                                                 {"name": "ratio", "dtype": "float32", "shape": [1]}]}


def test_tensorrt_runner_profile_and_availability():
    from quantart_runtime.backends.tensorrt import TensorRTRunner

    manifest = {"latent_stride": 16, "profile": {"min_res": 16, "opt_res": 256, "max_res": 1024, "max_batch": 32},
                "graphs": {"fp32": {"tiny": MANIFEST_ENTRY,
                                    "img": {"inputs": [{"name": "image", "shape": ["batch", 3, "height", "width"]}]}}}}
    runner = TensorRTRunner("unused", manifest, precision="fp32", max_batch=8)
    assert runner.profile("tiny") == {"z": [[1, D, 1, 1], [1, D, 16, 16], [8, D, 64, 64]], "ratio": [[1], [1], [1]]}
    assert runner.profile("img")["image"][2] == [8, 3, 1024, 1024]
    from quantart_runtime.backends.trt_engine import tensorrt_version_ok

    assert tensorrt_version_ok("10.12.0") and tensorrt_version_ok("11.4.1")
    assert not tensorrt_version_ok("10.11.2") and not tensorrt_version_ok("garbage")
    ok, why = TensorRTRunner.is_available()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert not ok and "TensorRT is not installed" in why
    with pytest.raises(RuntimeError, match="before activate"):
        runner.infer("tiny", {})
    with pytest.raises(TypeError, match="keep_on_device"):          # the old option is gone, and says so
        TensorRTRunner("unused", manifest, keep_on_device=("q",))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnxruntime(exported, tmp_path):
    """GPU check: must show a built then cached engine per graph (cache_status "built" -> "hit", the
    second activation importing neither onnx nor Triton), FP32 indices identical to ONNX Runtime
    (TF32 cleared), and the device path: a DeviceArray output fed back in with no extra copy."""
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from quantart_runtime.backends.tensorrt import TensorRTRunner

    ok, why = TensorRTRunner.is_available()
    if not ok:
        pytest.skip(why)
    import hashlib

    import onnxruntime as ort

    d, one, _ = exported
    data = (d / "one.onnx").read_bytes()
    manifest = {"latent_stride": 16, "profile": {"min_res": 16, "opt_res": 64, "max_res": 256, "max_batch": 4},
                "graphs": {"fp32": {"tiny": {**MANIFEST_ENTRY, "sha256": hashlib.sha256(data).hexdigest()}}}}
    z = np.random.default_rng(0).standard_normal((2, D, 3, 5)).astype(np.float32)
    feeds = {"z": z, "ratio": np.array([0.7], np.float32)}
    ref = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for expected_status in ("built", "hit"):
        with TensorRTRunner(d, manifest, precision="fp32", cache_dir=tmp_path) as runner:
            assert runner.cache_status == {"tiny": expected_status}
            out = runner.infer("tiny", feeds)
            runner.transfers.clear()
            dev = runner.infer("tiny", {"z": runner.to_device(z), "ratio": runner.to_device(feeds["ratio"])},
                               host_outputs=False)
            assert runner.is_device_value(dev["q"]) and dict(runner.transfers) == {"h2d": 2}
            np.testing.assert_array_equal(runner.to_host(dev["idx"]), out["idx"])
        np.testing.assert_array_equal(out["idx"], ref[1])
        np.testing.assert_allclose(out["q"], ref[0], rtol=1e-6, atol=1e-6)
