"""ONNX graphs of the streaming segments, written node by node from the torch modules' weights.

Each segment is small (one GroupNorm'd convolution, an attention piece, a nearest-code step), so it is
built directly with ``onnx.helper`` instead of tracing: every spatial dimension is dynamic, the node
pattern is fixed (what the TensorRT / fused-attention passes match), and a model's hundred segments
export in seconds. Numerics are those of the torch modules (``quantart.modules.blocks``); a GroupNorm
takes its statistics as graph inputs ``mean`` / ``rstd`` (1, C, 1, 1), so ``GN(x) = x · a + b`` with
``a = rstd · γ`` and ``b = β − mean · a`` (folded on the (1, C, 1, 1) tensors: two passes over the
image instead of three) with statistics over the whole image (accumulated by the runtime, float64).

An output that a later GroupNorm reads also gives the runtime its statistics, computed where the tile
is still in cache-sized pieces of the graph's own pass (``row_stats``): ``<out>_ref`` (1, C, 1, 1), the
channel means of the tile's first row, and per-row sums ``<out>_sum`` / ``<out>_sq`` (B, C, rows) of
``y − ref`` and its square, each over one row (float32 over at most a row's width, then float64 in the
runtime; the shift keeps a large mean from cancelling the variance).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
STATS = ("ref", "sum", "sq")   # the row-statistics outputs of a normalised tensor: <out>_ref / _sum / _sq
_ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)


class GraphBuilder:
    """One ONNX graph under construction: ``input`` / ``const`` / ``op`` / ``output``, then ``model()``."""

    def __init__(self, name: str):
        self.name = name
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self._n = 0

    def _fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def input(self, name: str, shape, dtype: str = "float32") -> str:
        """A graph input of ``shape`` (None for a dynamic dim); returns its value name."""
        self.inputs.append(helper.make_tensor_value_info(name, _ELEM[dtype], list(shape)))
        return name

    def output(self, value: str, name: str, shape, dtype: str = "float32") -> None:
        """Name the node output ``value`` ``name`` (renamed in place: one tensor name for every backend)."""
        for node in self.nodes:
            node.output[:] = [name if o == value else o for o in node.output]
            node.input[:] = [name if i == value else i for i in node.input]
        self.outputs.append(helper.make_tensor_value_info(name, _ELEM[dtype], list(shape)))

    def const(self, array, stem: str = "c") -> str:
        """An initializer holding ``array``; returns its value name."""
        name = self._fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind: str, inputs, n_out: int = 1, **attrs):
        """Append one ``kind`` node; returns its output name (a list of names when ``n_out`` > 1)."""
        outs = [self._fresh(kind.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(kind, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self) -> onnx.ModelProto:
        """The built graph as a checked ``ModelProto``."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="quantart-export")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    # -- the modules' pieces ---------------------------------------------------------------------
    def norm(self, x: str, mean: str, rstd: str, gn) -> str:
        """GroupNorm with given per-channel statistics: x · a + b, a = rstd · γ, b = β − mean · a."""
        c = gn.num_channels
        gamma = self.const(_np(gn.weight).reshape(1, c, 1, 1), "gamma")
        beta = self.const(_np(gn.bias).reshape(1, c, 1, 1), "beta")
        scale = self.op("Mul", [rstd, gamma])
        shift = self.op("Sub", [beta, self.op("Mul", [mean, scale])])
        return self.op("Add", [self.op("Mul", [x, scale]), shift])

    def row_stats(self, y: str) -> tuple[str, str, str]:
        """(ref, per-row sums of y − ref, per-row sums of (y − ref)²) of a (B, C, h, w) value; ref is the
        (1, C, 1, 1) mean of the first row (any per-channel reference is exact; a near one keeps the
        float32 row sums of squares from cancelling)."""
        axis = lambda *a: self.const(np.array(a, dtype=np.int64), "axes")  # noqa: E731
        first = self.op("Slice", [y, axis(0), axis(1), axis(2)])
        ref = self.op("ReduceMean", [first, axis(0, 2, 3)], keepdims=1)
        d = self.op("Sub", [y, ref])
        return ref, self.op("ReduceSum", [d, axis(3)], keepdims=0), self.op("ReduceSumSquare", [d, axis(3)],
                                                                               keepdims=0)

    def output_tensor(self, value: str, name: str, shape, tensor: dict) -> None:
        """``output`` for a float tensor of the schedule, with its ``row_stats`` outputs when a later
        GroupNorm reads it (``tensor["groups"]``)."""
        stats = self.row_stats(value) if tensor["groups"] else None
        self.output(value, name, shape)
        if stats:
            c = shape[1]
            for suffix, v, s in zip(STATS, stats, ([1, c, 1, 1], [shape[0], c, shape[2]], [shape[0], c, shape[2]])):
                self.output(v, f"{name}_{suffix}", s)

    def silu(self, x: str) -> str:
        """x * sigmoid(x) (the official ``nonlinearity``)."""
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def conv(self, x: str, conv, stride: int | None = None, pad: int | None = None) -> str:
        """``conv`` (a torch Conv2d) applied to ``x`` with its weights as initializers."""
        w = self.const(_np(conv.weight), "w")
        b = self.const(_np(conv.bias), "b")
        p = conv.padding[0] if pad is None else pad
        s = conv.stride[0] if stride is None else stride
        k = conv.kernel_size[0]
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[p, p, p, p], strides=[s, s])

    def downsample(self, x: str, ds) -> str:
        """Downsample: pad right/bottom by one, 3×3 conv stride 2 (or 2×2 average pooling)."""
        if not ds.with_conv:
            return self.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        pads = self.const(np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64), "pads")
        return self.conv(self.op("Pad", [x, pads], mode="constant"), ds.conv, stride=2, pad=0)

    def upsample(self, x: str, us) -> str:
        """Upsample: ×2 nearest neighbour (torch's floor rule), then a 3×3 conv."""
        scales = self.const(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
        y = self.op("Resize", [x, "", scales], mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")
        return self.conv(y, us.conv) if us.with_conv else y

    def resample(self, x: str, module) -> str:
        """The down- or upsampling ``module`` applied to ``x``."""
        if module is None:
            return x
        return self.downsample(x, module) if type(module).__name__ == "Downsample" else self.upsample(x, module)

    def tokens(self, x: str, c: int) -> str:
        """(B, C, h, w) -> (B, C, h·w)."""
        return self.op("Reshape", [x, self.const(np.array([0, c, -1], dtype=np.int64), "shape")])

    def attention(self, q: str, k: str, v: str, c: int) -> str:
        """softmax(qᵀk / √C) applied to v, single head; q (B,C,h,w), k and v (B,C,hk,wk) -> (B,C,h,w)."""
        q3 = self.op("Transpose", [self.tokens(q, c)], perm=[0, 2, 1])           # B, T, C
        scores = self.op("MatMul", [q3, self.tokens(k, c)])                       # B, T, Tk
        scores = self.op("Mul", [scores, self.const(np.array(float(c) ** -0.5, dtype=np.float32), "scale")])
        attn = self.op("Softmax", [scores], axis=-1)
        v3 = self.op("Transpose", [self.tokens(v, c)], perm=[0, 2, 1])           # B, Tk, C
        out = self.op("Transpose", [self.op("MatMul", [attn, v3])], perm=[0, 2, 1])  # B, C, T
        return self.op("Reshape", [out, self.op("Shape", [q])])

    def nearest_code(self, z: str, codebook, ratio: str | None):
        """quantart_export.nearest_code as nodes: (quantized or fused latent (B,D,h,w), indices (B,h,w))."""
        e = codebook.detach().float().cpu().numpy().astype(np.float32)
        d = e.shape[1]
        shape = self.op("Shape", [z])
        bhw = self.op("Gather", [shape, self.const(np.array([0, 2, 3], dtype=np.int64), "idx")], axis=0)
        zf = self.op("Reshape", [self.op("Transpose", [z], perm=[0, 2, 3, 1]),
                                 self.const(np.array([-1, d], dtype=np.int64), "shape")])
        scores = self.op("Sub", [self.const((e * e).sum(1).astype(np.float32), "e_sq"),
                                 self.op("Mul", [self.op("MatMul", [zf, self.const(e.T.copy(), "e_t")]),
                                                 self.const(np.array(2.0, dtype=np.float32), "two")])])
        idx = self.op("ArgMin", [scores], axis=1, keepdims=0)
        codes = self.op("Gather", [self.const(e, "codebook"), idx], axis=0)
        if ratio is not None:
            one = self.const(np.array(1.0, dtype=np.float32), "one")
            codes = self.op("Add", [self.op("Mul", [ratio, codes]),
                                    self.op("Mul", [self.op("Sub", [one, ratio]), zf])])
        full = self.op("Concat", [bhw, self.const(np.array([d], dtype=np.int64), "d")], axis=0)
        q = self.op("Transpose", [self.op("Reshape", [codes, full])], perm=[0, 3, 1, 2])
        return q, self.op("Reshape", [idx, bhw])


def build_segment(name: str, step: dict, parts: dict, tensors: dict) -> onnx.ModelProto:
    """The ONNX graph of one schedule step (see ``quantart_export.segments``): inputs x [, skip] [, mean,
    rstd] [, k, v] [, ratio]; outputs as the step's ``outputs``."""
    g = GraphBuilder(name)
    op = step["op"]
    cin = tensors[step["inputs"]["x"]]["channels"]
    x = g.input("x", ["batch", cin, "h", "w"])
    skip = g.input("skip", ["batch", tensors[step["inputs"]["skip"]]["channels"], "h", "w"]) \
        if "skip" in step["inputs"] else None
    mean = rstd = None
    if step.get("norm"):
        mean, rstd = g.input("mean", [1, cin, 1, 1]), g.input("rstd", [1, cin, 1, 1])
    k = v = None
    if step.get("whole"):
        kc = tensors[step["whole"]["k"]]["channels"]
        k, v = g.input("k", ["batch", kc, "kh", "kw"]), g.input("v", ["batch", kc, "kh", "kw"])
    ratio = g.input("ratio", [1]) if step.get("ratio") else None
    m = parts["module"]
    if op == "conv_in":            # [pre 1×1 conv] then a 3×3 conv, no norm
        y = g.conv(x, parts["pre"]) if parts.get("pre") is not None else x
        y = g.conv(y, m)
    elif op == "resnet_a":         # conv1(silu(norm1(x)))
        y = g.conv(g.silu(g.norm(x, mean, rstd, m.norm1)), m.conv1)
    elif op == "resnet_b":         # shortcut(skip) + conv2(silu(norm2(h)))
        y = g.conv(g.silu(g.norm(x, mean, rstd, m.norm2)), m.conv2)
        if m.in_channels != m.out_channels:
            skip = g.conv(skip, m.conv_shortcut if m.use_conv_shortcut else m.nin_shortcut)
        y = g.op("Add", [skip, y])
    elif op == "attn_kv":          # k, v of the normalised keys
        xn = g.norm(x, mean, rstd, m.norm)
        for key, conv in (("k", m.k), ("v", m.v)):
            g.output_tensor(g.conv(xn, conv), key, ["batch", cin, "h", "w"], tensors[step["outputs"][key]])
        return g.model()
    elif op == "attn_out":         # [x +] proj_out(attention(q(norm(x)), k, v))
        y = g.conv(g.attention(g.conv(g.norm(x, mean, rstd, m.norm), m.q), k, v, cin), m.proj_out)
        if m.residual:
            y = g.op("Add", [x, y])
    elif op == "head":             # conv_out(silu(norm_out(x))) [, quant_conv] [, nearest code]
        y = g.conv(g.silu(g.norm(x, mean, rstd, m)), parts["conv_out"])
        if parts.get("post") is not None:
            y = g.conv(y, parts["post"])
    elif op == "nearest_code":
        y = x
    else:
        raise ValueError(f"unknown segment op {op!r}")
    y = g.resample(y, parts.get("resample"))
    if parts.get("codebook") is not None:
        q, idx = g.nearest_code(y, parts["codebook"], ratio)
        names = list(step["outputs"])
        latent = tensors[step["outputs"][names[0]]]
        g.output_tensor(q, names[0], ["batch", latent["channels"], "oh", "ow"], latent)
        g.output(idx, names[1], ["batch", "oh", "ow"], "int64")
        return g.model()
    out = tensors[step["outputs"]["y"]]
    g.output_tensor(y, "y", ["batch", out["channels"], "oh", "ow"], out)
    return g.model()
