"""Fused attention for ONNX Runtime (export/attention_fusion.py): every attention of the exported graphs as one
``com.microsoft.MultiHeadAttention``, written beside each graph as ``<graph>.ort.onnx``, verified against
PyTorch, run by the ONNX Runtime runner, and linear in memory (measured in a subprocess)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export_helpers import manifest, ratio, run, session
from quantart_export.attention_fusion import count_fused, fuse_attention_report, scale_query_first
from quantart_runtime.manifest import sha256_file
from quantart_runtime.memory import Geometry

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = ("content_encoder", "style_encoder", "sga", "decoder")


def _feeds(graph: str, rng, embed: int = 64) -> dict:
    if graph == "sga":
        return {"content_latent": rng.standard_normal((2, embed, 9, 11)).astype(np.float32),
                "style_latent": rng.standard_normal((2, embed, 6, 7)).astype(np.float32),   # its own tokens
                "content_ratio": ratio(1.0), "output_ratio": ratio(0.8)}
    if graph == "decoder":
        return {"latent": rng.standard_normal((2, embed, 9, 11)).astype(np.float32)}
    return {"image": rng.uniform(-1, 1, (2, 3, 36, 44)).astype(np.float32)}


def test_every_graph_has_a_verified_fused_variant(model_dir):
    man = manifest(model_dir)
    for precision in ("fp32", "fp16"):
        for graph in GRAPHS:
            entry = man["graphs"][precision][graph]["ort_fused"]
            path = model_dir / entry["file"]
            assert entry["file"] == entry["file"].split("/")[-1] and entry["file"].endswith(".ort.onnx")
            assert sha256_file(path) == entry["sha256"]
            assert entry["op"] == "com.microsoft.MultiHeadAttention" and entry["for"] == "onnxruntime"
            model = onnx.load(str(path))
            assert count_fused(model) == entry["attention"] > 0
            assert not [n for n in model.graph.node if n.op_type == "Softmax"], (precision, graph)
            std = onnx.load(str(model_dir / man["graphs"][precision][graph]["file"]))
            assert [i.name for i in model.graph.input] == [i.name for i in std.graph.input]
            assert [o.name for o in model.graph.output] == [o.name for o in std.graph.output]
    # the tiny model attends at strides 2 and 4 (encoders, decoder) and in 6 SGA blocks (self + cross)
    assert man["graphs"]["fp32"]["sga"]["ort_fused"]["attention"] == 12
    rows = [c for c in man["verification"]["checks"] if c["graph"].endswith("[ort fused attention]")]
    judged = {(c["precision"], c["resolution"], c["graph"].split(" [")[0]) for c in rows if c["threshold"] is not None}
    for precision in ("fp32", "fp16"):
        for res in man["verification"]["resolutions"]:
            for graph in GRAPHS + ("end to end",):
                if precision == "fp16" and graph == "end to end":
                    continue   # reported, not judged (verify.py)
                assert (precision, res, graph) in judged, (precision, res, graph)
    assert all(c["passed"] for c in rows)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_graphs_give_the_unfused_outputs_and_tokens(model_dir, precision):
    man = manifest(model_dir)
    rng = np.random.default_rng(1)
    for graph in GRAPHS:
        entry = man["graphs"][precision][graph]
        feeds = _feeds(graph, rng)
        ref = run(session(model_dir / entry["file"]), **feeds)
        ours = run(session(model_dir / entry["ort_fused"]["file"]), **feeds)
        for a, b in zip(ours, ref):
            assert a.shape == b.shape and a.dtype == b.dtype
            if a.dtype == np.int64:
                assert np.mean(a == b) >= 0.999, graph
            else:
                tol = 1e-4 if precision == "fp32" else 2e-2   # FP16: rounding of the scores, once
                assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max()), (graph, np.abs(a - b).max())


def _attention_graph(order: str, shared_scores: bool = False) -> onnx.ModelProto:
    """A hand-written single-head attention with other names, Div for the scale and the usual P @ V order
    (``order="pv"``) or AttnBlock's Vt @ Pᵀ (``"vp"``)."""
    c = 8
    nodes = [helper.make_node("Transpose", ["kin"], ["kt"], perm=[0, 2, 1], name="t_k"),
             helper.make_node("MatMul", ["qin", "kt"], ["scores"], name="mm1"),
             helper.make_node("Div", ["scores", "d"], ["scaled"], name="div"),
             helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="sm")]
    if order == "pv":
        nodes.append(helper.make_node("MatMul", ["probs", "vin"], ["out"], name="mm2"))
        v = helper.make_tensor_value_info("vin", TensorProto.FLOAT, ["b", "tk", c])
    else:
        nodes += [helper.make_node("Transpose", ["probs"], ["pt"], perm=[0, 2, 1], name="t_p"),
                  helper.make_node("MatMul", ["vin", "pt"], ["out"], name="mm2")]
        v = helper.make_tensor_value_info("vin", TensorProto.FLOAT, ["b", c, "tk"])
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    if shared_scores:
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    inputs = [helper.make_tensor_value_info("qin", TensorProto.FLOAT, ["b", "tq", c]),
              helper.make_tensor_value_info("kin", TensorProto.FLOAT, ["b", "tk", c]), v]
    graph = helper.make_graph(nodes, "attn", inputs, outputs, [numpy_helper.from_array(np.array(2.5, np.float32), "d")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("order", ["pv", "vp"])
def test_the_pass_matches_by_structure_not_names(order):
    model = _attention_graph(order)
    fused, rep = fuse_attention_report(model)
    assert count_fused(fused) == 1 and rep.fused == ["sm"] and not rep.skipped
    assert count_fused(model) == 0                        # the input is not modified
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    assert helper.get_attribute_value(next(a for a in mha.attribute if a.name == "scale")) == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 13, 8)).astype(np.float32), rng.standard_normal((2, 5, 8)).astype(np.float32)
    v = rng.standard_normal((2, 5, 8) if order == "pv" else (2, 8, 5)).astype(np.float32)
    ref = run(session_bytes(model), qin=q, kin=k, vin=v)[0]
    ours = run(session_bytes(fused), qin=q, kin=k, vin=v)[0]
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_scale_query_first_gives_the_standard_graph_result(model_dir, precision):
    """The TensorRT form (scale on Q before the first MatMul): no Mul/Div left between MatMul and Softmax,
    same outputs up to rounding."""
    entry = manifest(model_dir)["graphs"][precision]["sga"]
    std = onnx.load(str(model_dir / entry["file"]))
    moved = scale_query_first(std)
    producer = {o: n for n in moved.graph.node for o in n.output}
    for sm in (n for n in moved.graph.node if n.op_type == "Softmax"):
        prev = producer[sm.input[0]]
        prev = producer[prev.input[0]] if prev.op_type == "Cast" else prev
        assert prev.op_type == "MatMul" and producer[prev.input[0]].op_type == "Mul"
    feeds = _feeds("sga", np.random.default_rng(2))
    ref, ours = run(session(model_dir / entry["file"]), **feeds), run(session_bytes(moved), **feeds)
    assert np.mean(ref[1] == ours[1]) >= 0.999
    assert np.abs(ref[0] - ours[0]).max() <= (1e-4 if precision == "fp32" else 2e-2) * np.abs(ref[0]).max()


def test_a_shared_intermediate_is_left_alone():
    fused, rep = fuse_attention_report(_attention_graph("pv", shared_scores=True))
    assert count_fused(fused) == 0 and rep.skipped and "scores" in rep.skipped[0][1]


def session_bytes(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_the_onnxruntime_runner_picks_the_fused_graphs(model_dir, tmp_path):
    from quantart_runtime import Stylizer
    from quantart_runtime.errors import ModelError

    with Stylizer.load(model_dir, backend="onnxruntime", providers=["CPUExecutionProvider"]) as st:
        assert st.runner.fused_graphs == {g: f"{g}.ort.onnx" for g in GRAPHS} and st.runner.linear_attention
        assert st.size_policy.geometry.fused_attention
        img = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
        fused_out = st.stylize(img, img, style_size=32)
    with Stylizer.load(model_dir, backend="onnxruntime", providers=["CPUExecutionProvider"],
                       fused_attention=False) as st:
        assert st.runner.fused_graphs == {} and not st.runner.linear_attention
        assert not st.size_policy.geometry.fused_attention
        std_out = st.stylize(img, img, style_size=32)
    assert np.abs(fused_out.astype(int) - std_out.astype(int)).max() <= 1
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    with open(broken / "decoder.ort.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="decoder.ort.onnx does not match its sha256"):
        Stylizer.load(broken, backend="onnxruntime", providers=["CPUExecutionProvider"])
    (broken / "decoder.ort.onnx").unlink()              # a variant removed: the standard graph runs
    with Stylizer.load(broken, backend="onnxruntime", providers=["CPUExecutionProvider"]) as st:
        assert "decoder" not in st.runner.fused_graphs and not st.runner.linear_attention


def test_the_estimate_is_linear_with_fused_attention(model_dir):
    geo = Geometry.from_manifest(manifest(model_dir))
    fused = geo.with_fused_attention()
    # activations bound the fused estimate: ×4 per doubling of the side; the score matrices ×16
    assert fused.peak_bytes(1024, 1024, 1, 64) / fused.peak_bytes(512, 512, 1, 64) == pytest.approx(4, rel=0.02)
    assert geo.peak_bytes(1024, 1024, 1, 64) / geo.peak_bytes(512, 512, 1, 64) > 14
    assert fused.peak_bytes(256, 256, 1, 64) < geo.peak_bytes(256, 256, 1, 64) / 10


_MEASURE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from quantart_runtime import Stylizer
    from quantart_runtime.memory import _vm_size
    from quantart_runtime.util import one_line

    model, side, fused, headroom = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "fused", int(sys.argv[4])
    st = Stylizer.load(model, backend="onnxruntime", providers=["CPUExecutionProvider"], intra_op_threads=1,
                       fused_attention=fused)
    rng = np.random.default_rng(0)
    code = st.encode_style(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), size=32)
    st.set_memory_budget(1 << 50)        # this test measures the call: the size policy must not refuse it
    estimate = st.size_policy.geometry.peak_bytes(side, side, 1, int(np.prod(code.latent.shape[2:])))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    limit = _vm_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        out = st.stylize(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), code)
        status = "ok" if out.shape == (side, side, 3) else "wrong shape"
    except Exception as exc:
        status = "failed: " + one_line(exc)[:200]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"status": status, "peak": peak, "estimate": estimate}))
""")


def _measure(model_dir, side: int, mode: str, headroom: int, tmp_path) -> dict:
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(model_dir), str(side), mode, str(headroom)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fused_attention_runs_in_linear_memory_where_the_score_matrices_cannot(model_dir, tmp_path):
    """256² on the tiny model: 16384 tokens attend at stride 2, so one fp32 score matrix alone is 1 GiB
    (the unfused estimate: 3 GiB; measured 1.1 GiB). Under RLIMIT_AS = the loaded process + 768 MiB the
    fused graphs run, with a peak RSS under a quarter of one score matrix and within the estimate; the
    standard graphs cannot. (benchmarks/results/attention_memory_tiny.md: the same up to 512², 65536 tokens.)"""
    side, headroom = 256, 768 << 20
    tokens = (side // 2) ** 2
    fused = _measure(model_dir, side, "fused", headroom, tmp_path)
    assert fused["status"] == "ok", fused
    assert fused["peak"] < 4 * tokens * tokens / 4            # < a quarter of one score matrix
    assert fused["peak"] <= fused["estimate"]                 # the fused estimate is an upper bound
    standard = _measure(model_dir, side, "standard", headroom, tmp_path)
    assert standard["status"].startswith("failed"), standard  # the score matrices do not fit the limit
    assert standard["estimate"] > headroom
