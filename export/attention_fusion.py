"""Linear-memory attention for ONNX Runtime: every attention of a graph as one ``com.microsoft.MultiHeadAttention``.

The exported attention blocks (``quantart.modules.blocks.AttnBlock``; the SGA's self- and cross-attention,
whose keys have the style latent's own token count) appear in the ONNX graphs as

    S = MatMul(Q, Kt)                    Q (B, Tq, C), Kt (B, C, Tk)
    S = Mul(S, scale)                    a scalar constant (or Div by one; absent: scale 1)
    [S = Cast(S, to=FLOAT)]              FP16 graphs: softmax statistics in FP32
    P = Softmax(S, axis=-1)
    [P = Cast(P, to=FLOAT16)]
    O = MatMul(Vt, Transpose(P, [0,2,1]))   Vt (B, C, Tk) -> O (B, C, Tq)   (AttnBlock's order)
     or MatMul(P, V)                         V (B, Tk, C) -> O (B, Tq, C)   (the usual order)

which materialises the Tq x Tk score matrix (three copies of it at once: quadratic memory). ``fuse_attention``
finds that pattern by structure (never by node names, so any graph of ours, the streaming executor's
segment graphs included, can use it) and replaces it with

    O = MultiHeadAttention(Q, Transpose(Kt), Transpose(Vt), num_heads=1, scale=scale)   [+ Transpose back]

ONNX Runtime's contrib op, which runs flash attention on the CPU (MLAS, FP32; its FP16 kernel is linear
in memory too) and flash / memory-efficient attention on CUDA: memory linear in the tokens. The op runs
in the dtype of Q (FP16 graphs: FP16 in, FP32 softmax statistics inside the kernel). Every other tensor
name of the graph is kept, so the fused graph has the same inputs and outputs. A candidate that does not
match exactly (another consumer of an intermediate, a rank other than 3, a non-constant scale, ...) is
left alone and reported in ``AttentionFusion.skipped``.

The fused graphs are for ONNX Runtime only (OpenVINO and TensorRT do not know the contrib op); the
standard graphs stay for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MS_DOMAIN = "com.microsoft"
OP_TYPE = "MultiHeadAttention"


@dataclass
class AttentionFusion:
    """What ``fuse_attention_report`` did: the Softmax nodes fused and those skipped (with why)."""
    fused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Skip(Exception):
    pass


class _Graph:
    def __init__(self, model):
        import onnx

        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.producer, self.consumers = {}, {}
        for node in self.graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.outputs = {o.name for o in self.graph.output}
        self.types = {}
        inferred = model
        try:  # value_info the exporter wrote, completed by shape inference where it lacks a tensor
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 (a contrib op or odd graph: use what is recorded)
            pass
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                self.types[vi.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else
                                                     (d.dim_param or None) for d in t.shape.dim])
            else:
                self.types[vi.name] = (t.elem_type, None)
        for name, t in self.inits.items():
            self.types[name] = (t.data_type, list(t.dims))

    def only_consumer(self, name: str, op_type: str | None = None):
        """The single node reading ``name`` (of ``op_type`` when given); skip when shared or an output."""
        users = self.consumers.get(name, [])
        if name in self.outputs or len(users) != 1:
            raise _Skip(f"{name} has {len(users)} consumers{' and is a graph output' if name in self.outputs else ''}")
        if op_type is not None and users[0].op_type != op_type:
            raise _Skip(f"{name} feeds {users[0].op_type}, not {op_type}")
        return users[0]

    def constant(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.array(a.f if a.name == "value_float" else a.i)
        return None

    def rank(self, name: str) -> int | None:
        shape = self.types.get(name, (None, None))[1]
        return None if shape is None else len(shape)

    def dtype(self, name: str) -> int | None:
        return self.types.get(name, (None, None))[0]

    def shape(self, name: str):
        return self.types.get(name, (None, None))[1]


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_swap_last_two(node) -> bool:
    return node is not None and node.op_type == "Transpose" and list(_attr(node, "perm", [])) == [0, 2, 1]


@dataclass
class _Match:
    softmax: object
    bmm1: object
    query: str
    key_t: str             # (B, C, Tk): the second operand of the first MatMul
    value: str
    value_channels_first: bool   # value given as (B, C, Tk) (AttnBlock) or (B, Tk, C)
    bmm2: object
    output_channels_first: bool  # bmm2's output is (B, C, Tq) (AttnBlock) or (B, Tq, C)
    scale: float
    removed: list
    scale_node: object = None    # the Mul / Div that scales the scores (None: scale 1)


def _match(g: _Graph, softmax) -> _Match:
    s_in = softmax.input[0]
    if g.rank(s_in) != 3:
        raise _Skip(f"softmax input rank {g.rank(s_in)} (the pass handles 3-D single-head attention)")
    axis = int(_attr(softmax, "axis", -1))
    if axis not in (-1, 2):
        raise _Skip(f"softmax over axis {axis}, not the key axis")
    removed = [softmax]
    node = g.producer.get(s_in)
    pre_cast = None
    if node is not None and node.op_type == "Cast":
        pre_cast = node
        g.only_consumer(node.output[0], "Softmax")
        removed.append(node)
        node = g.producer.get(node.input[0])
    scale, scale_node = 1.0, None
    if node is not None and node.op_type in ("Mul", "Div"):
        scale_node = node
        g.only_consumer(node.output[0])
        consts = [g.constant(i) for i in node.input]
        if node.op_type == "Mul" and consts[1] is not None:
            data, const = node.input[0], consts[1]
        elif node.op_type == "Mul" and consts[0] is not None:
            data, const = node.input[1], consts[0]
        elif node.op_type == "Div" and consts[1] is not None:
            data, const = node.input[0], consts[1]
        else:
            raise _Skip(f"the score scale of {node.op_type} is not a constant")
        if const.size != 1:
            raise _Skip("the score scale is not a scalar")
        value = float(np.asarray(const, dtype=np.float64).reshape(()))
        if value == 0.0 or not np.isfinite(value):
            raise _Skip(f"score scale {value}")
        scale = value if node.op_type == "Mul" else 1.0 / value
        removed.append(node)
        node = g.producer.get(data)
    if node is None or node.op_type != "MatMul":
        raise _Skip("the softmax input is not MatMul(Q, Kᵀ) (times a constant)")
    bmm1 = node
    g.only_consumer(bmm1.output[0])
    removed.append(bmm1)
    query, key_t = bmm1.input
    if g.rank(query) != 3 or g.rank(key_t) != 3:
        raise _Skip("Q or Kᵀ is not 3-D")
    attn_dtype = g.dtype(query)
    if attn_dtype is None or attn_dtype != g.dtype(key_t):
        raise _Skip("Q and Kᵀ dtypes are unknown or differ")
    if pre_cast is not None and g.dtype(pre_cast.input[0]) != attn_dtype:
        raise _Skip("the cast before the softmax does not start from the attention dtype")
    q_shape, k_shape = g.shape(query), g.shape(key_t)
    if isinstance(q_shape[0], int) and isinstance(k_shape[0], int) and q_shape[0] != k_shape[0]:
        raise _Skip("Q and K batch sizes differ (broadcast)")

    out = softmax.output[0]
    node = g.only_consumer(out)
    if node.op_type == "Cast":
        if pre_cast is None or int(_attr(node, "to")) != attn_dtype:
            raise _Skip("the cast after the softmax does not return to the attention dtype")
        removed.append(node)
        out = node.output[0]
        node = g.only_consumer(out)
    elif pre_cast is not None:
        raise _Skip("a cast before the softmax without one after it")
    if _is_swap_last_two(node):            # AttnBlock: O = MatMul(Vt, Pᵀ) -> (B, C, Tq)
        removed.append(node)
        bmm2 = g.only_consumer(node.output[0], "MatMul")
        if bmm2.input[1] != node.output[0]:
            raise _Skip("Pᵀ is not the second MatMul operand")
        value, value_cf, out_cf = bmm2.input[0], True, True
    elif node.op_type == "MatMul" and node.input[0] == out and node.input[1] != out:
        bmm2 = node                        # O = MatMul(P, V) -> (B, Tq, C)
        value, value_cf, out_cf = bmm2.input[1], False, False
    else:
        raise _Skip(f"the probabilities feed {node.op_type}, not the second MatMul")
    if g.rank(value) != 3 or g.dtype(value) != attn_dtype:
        raise _Skip("V is not 3-D or not of the attention dtype")
    removed.append(bmm2)
    return _Match(softmax, bmm1, query, key_t, value, value_cf, bmm2, out_cf, scale, removed, scale_node)


def _rewrite(g: _Graph, m: _Match, index: int, taken: set) -> list:
    """The nodes that replace ``m`` (inserted where its last MatMul stood)."""
    from onnx import helper

    def fresh(stem: str) -> str:
        name, k = stem, 0
        while name in taken:
            k += 1
            name = f"{stem}_{k}"
        taken.add(name)
        return name

    stem = f"fused_attention_{index}"
    nodes = []

    def tokens_last(name: str) -> str:   # (B, C, T) -> (B, T, C), reusing an existing swap when there is one
        prod = g.producer.get(name)
        if _is_swap_last_two(prod):
            return prod.input[0]
        out = fresh(f"{stem}_{name}_bsd")
        nodes.append(helper.make_node("Transpose", [name], [out], name=fresh(f"{stem}_transpose"), perm=[0, 2, 1]))
        return out

    key = tokens_last(m.key_t)
    value = tokens_last(m.value) if m.value_channels_first else m.value
    final = m.bmm2.output[0]
    mha_out = fresh(f"{stem}_out") if m.output_channels_first else final
    nodes.append(helper.make_node(OP_TYPE, [m.query, key, value], [mha_out], name=fresh(f"{stem}_mha"),
                                  domain=MS_DOMAIN, num_heads=1, scale=float(m.scale)))
    if m.output_channels_first:
        nodes.append(helper.make_node("Transpose", [mha_out], [final], name=fresh(f"{stem}_transpose_out"),
                                      perm=[0, 2, 1]))
    return nodes


def fuse_attention_report(model) -> tuple[object, AttentionFusion]:
    """``fuse_attention`` and what it did (fused / skipped Softmax nodes)."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    report = AttentionFusion()
    matches = []
    claimed: set[int] = set()
    for node in list(out.graph.node):
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        label = node.name or node.output[0]
        try:
            m = _match(g, node)
        except _Skip as why:
            report.skipped.append((label, str(why)))
            continue
        if any(id(n) in claimed for n in m.removed):
            report.skipped.append((label, "overlaps another attention"))
            continue
        claimed.update(id(n) for n in m.removed)
        matches.append(m)
        report.fused.append(label)
    if not matches:
        return out, report
    taken = {n.name for n in out.graph.node} | set(g.producer) | set(g.inits) | {i.name for i in out.graph.input}
    replacement = {id(m.bmm2): _rewrite(g, m, i, taken) for i, m in enumerate(matches)}
    new_nodes = []
    for node in out.graph.node:
        if id(node) in replacement:
            new_nodes.extend(replacement[id(node)])
        elif id(node) not in claimed:
            new_nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    live = {o for n in new_nodes for o in n.output} | {i.name for i in out.graph.input}
    kept = [vi for vi in out.graph.value_info if vi.name in live]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    if not any(op.domain == MS_DOMAIN for op in out.opset_import):
        out.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    return out, report


def fuse_attention(model):
    """``model`` (an ``onnx.ModelProto``, not modified) with every attention as ``com.microsoft.MultiHeadAttention``.

    Returns a new ModelProto; a graph without a matching attention comes back as an unchanged copy.
    """
    return fuse_attention_report(model)[0]


def count_fused(model) -> int:
    """How many ``com.microsoft.MultiHeadAttention`` nodes ``model`` holds."""
    return sum(1 for n in model.graph.node if n.op_type == OP_TYPE and n.domain == MS_DOMAIN)


def scale_query_first(model):
    """``model`` (not modified) with each attention's score scale moved onto Q before the first MatMul:
    ``Softmax(MatMul(Q, Kt) * s)`` becomes ``Softmax(MatMul(Q * s, Kt))``, the form NVIDIA documents for
    TensorRT's attention fusion from primitive layers (the scale on Q or K before the first BMM). The same
    result up to rounding; attentions without a scale, or that do not match, are left as they are."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = _Graph(out)
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
              onnx.TensorProto.DOUBLE: np.float64}
    taken = {n.name for n in out.graph.node} | set(g.producer) | set(g.inits)
    inserts, drop = {}, set()
    for k, node in enumerate([n for n in out.graph.node if n.op_type == "Softmax"]):
        try:
            m = _match(g, node)
        except _Skip:
            continue
        if m.scale_node is None or g.dtype(m.query) not in dtypes:
            continue
        const, scaled = f"attention_{k}_query_scale", f"attention_{k}_query_scaled"
        while const in taken or scaled in taken:
            const, scaled = const + "_", scaled + "_"
        taken |= {const, scaled}
        out.graph.initializer.append(numpy_helper.from_array(np.array(m.scale, dtype=dtypes[g.dtype(m.query)]), const))
        inserts[id(m.bmm1)] = helper.make_node("Mul", [m.query, const], [scaled], name=f"{scaled}_mul")
        m.bmm1.input[0] = scaled
        user = g.only_consumer(m.scale_node.output[0])
        for i, name in enumerate(user.input):
            if name == m.scale_node.output[0]:
                user.input[i] = m.bmm1.output[0]
        drop.add(id(m.scale_node))
    nodes = []
    for node in out.graph.node:
        if id(node) in drop:
            continue
        if id(node) in inserts:
            nodes.append(inserts[id(node)])
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out
