"""Swap every nearest-codebook subgraph of an exported ONNX graph for one TensorRT plugin node.

The exporter emits (docs/model_format.md, "Nearest-codebook subgraph"), in FP32:

    scores = Sub(e_sq, Mul(MatMul(zf, Et), 2))      Et = Transpose(E) (usually constant-folded)
    idx    = ArgMin(scores, axis=1, keepdims=0)
    codes  = Gather(E, idx, axis=0)                 or Gather(E, Reshape(idx, [-1])) / GatherND(E, Unsqueeze(idx, -1))

This module finds that pattern with plain `onnx` (constants may come through initializers, Constant,
Cast, Identity, Transpose, Mul or ReduceSum nodes: the dynamo exporter folds them, the TorchScript
one leaves e_sq as ReduceSum(E*E)) and replaces it by

    idx32, codes = quantart::nearest_code(zf, codebook, sqnorm)      (domain PLUGIN_DOMAIN)
    idx          = Cast(idx32, to=INT64)

keeping every tensor name the rest of the graph uses, so the fusion and reshape nodes that follow
are untouched. Candidates that do not match exactly (another consumer of an intermediate tensor, a
Gather table that is not the MatMul's codebook, latents that shape inference does not show to be
rank 2 (N, D), ...) are left alone and reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PLUGIN_NAME = "nearest_code"
PLUGIN_NAMESPACE = "quantart"
PLUGIN_VERSION = "1"
PLUGIN_DOMAIN = "trt.plugins"


@dataclass
class Rewrite:
    """What `replace_nearest_code` did to one subgraph (or why it skipped one)."""
    argmin: str
    replaced: bool
    reason: str = ""
    n_codes: int = 0
    embed_dim: int = 0
    removed_nodes: list = field(default_factory=list)


def _onnx():
    import onnx
    return onnx


def _ranks(model) -> dict[str, int]:
    """{tensor name: rank} for every tensor whose rank ONNX shape inference knows."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:               # an unknown op, a too-large model: declared shapes only
        inferred = model
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = len(t.shape.dim)
    for init in g.initializer:
        out[init.name] = len(init.dims)
    return out


class _Graph:
    def __init__(self, graph, ranks: dict | None = None):
        onnx = _onnx()
        self.graph = graph
        self.ranks = ranks or {}
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.numpy_helper = onnx.numpy_helper

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                return _onnx().helper.get_attribute_value(a)
        return default

    def const(self, name, depth=0):
        """The constant value of tensor `name` as a numpy array, or None if it is not constant."""
        if depth > 8 or not name:
            return None
        if name in self.inits:
            return self.numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self.numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_int"):
                    return np.asarray(_onnx().helper.get_attribute_value(a))
                if a.name in ("value_floats", "value_ints"):
                    return np.asarray(list(_onnx().helper.get_attribute_value(a)))
            return None
        if node.op_type == "Identity":
            return self.const(node.input[0], depth + 1)
        if node.op_type == "Cast":
            v = self.const(node.input[0], depth + 1)
            to = self.attr(node, "to")
            if v is None or to not in (_onnx().TensorProto.FLOAT, _onnx().TensorProto.FLOAT16):
                return None
            return v.astype(np.float32 if to == _onnx().TensorProto.FLOAT else np.float16)
        if node.op_type == "Mul":       # e.g. E * E before the exporter folded it
            a, b = (self.const(i, depth + 1) for i in node.input[:2])
            return None if a is None or b is None else (a * b).astype(np.result_type(a, b))
        if node.op_type == "ReduceSum":  # e_sq = ReduceSum(E * E, axes=[1], keepdims=0) left unfolded
            v = self.const(node.input[0], depth + 1)
            axes = self.const(node.input[1], depth + 1) if len(node.input) > 1 and node.input[1] else \
                self.attr(node, "axes")
            if v is None or axes is None or len(np.asarray(axes).reshape(-1)) == 0:
                return None
            keep = bool(self.attr(node, "keepdims", 1))
            axes = tuple(int(a) for a in np.asarray(axes).reshape(-1))
            return v.sum(axis=axes, keepdims=keep, dtype=v.dtype)
        if node.op_type == "Transpose":
            v = self.const(node.input[0], depth + 1)
            perm = self.attr(node, "perm")
            if v is None or v.ndim != 2 or (perm is not None and list(perm) != [1, 0]):
                return None
            return v.T
        return None

    def only_consumer(self, name, node):
        return name not in self.outputs and [c.name for c in self.consumers.get(name, [])] == [node.name]


def _match(g: _Graph, argmin):
    """-> (dict describing the match, "") or (None, reason)."""
    if g.attr(argmin, "axis", 0) not in (1, -1) or g.attr(argmin, "keepdims", 1) != 0 \
            or g.attr(argmin, "select_last_index", 0) != 0:
        return None, "ArgMin is not (axis=1, keepdims=0, first index)"
    sub = g.producer.get(argmin.input[0])
    if sub is None or sub.op_type != "Sub" or not g.only_consumer(sub.output[0], argmin):
        return None, "ArgMin input is not a Sub used only by it"
    esq = g.const(sub.input[0])
    mul = g.producer.get(sub.input[1])
    if esq is None or mul is None or mul.op_type != "Mul" or not g.only_consumer(mul.output[0], sub):
        return None, "Sub is not (constant e_sq) - Mul(...)"
    two = [i for i in mul.input if g.const(i) is not None]
    rest = [i for i in mul.input if g.const(i) is None]
    if len(two) != 1 or len(rest) != 1 or g.const(two[0]).size != 1 or float(g.const(two[0]).reshape(())) != 2.0:
        return None, "Mul is not (MatMul * 2)"
    matmul = g.producer.get(rest[0])
    if matmul is None or matmul.op_type != "MatMul" or not g.only_consumer(matmul.output[0], mul):
        return None, "Mul input is not a MatMul used only by it"
    et = g.const(matmul.input[1])
    if et is None or et.ndim != 2 or g.const(matmul.input[0]) is not None:
        return None, "MatMul is not (latents, constant codebook^T)"
    rank = g.ranks.get(matmul.input[0])
    if rank != 2:        # the plugin takes z (N, D): its shape_expr[0] is the row count
        return None, f"MatMul latents {matmul.input[0]!r} are not rank 2 (rank {rank if rank else 'unknown'})"
    codebook = np.ascontiguousarray(et.T.astype(np.float32))
    k, d = codebook.shape
    if esq.size != k:
        return None, f"e_sq has {esq.size} entries for {k} codes"
    idx_name = argmin.output[0]
    gathers, helpers = [], []
    for c in g.consumers.get(idx_name, []):
        if _is_row_gather(g, c, idx_name, "Gather", codebook):
            gathers.append(c)
            continue
        # index adapters: Reshape(idx, [-1]) -> Gather (index_select), Unsqueeze(idx, -1) -> GatherND (e[idx])
        if c.op_type == "Reshape":
            shape = g.const(c.input[1])
            op = "Gather" if shape is not None and shape.size == 1 and int(shape.reshape(-1)[0]) == -1 else None
        elif c.op_type == "Unsqueeze":
            axes = g.const(c.input[1]) if len(c.input) > 1 else np.asarray(g.attr(c, "axes", []))
            op = "GatherND" if axes is not None and axes.size == 1 and int(axes.reshape(-1)[0]) in (1, -1) else None
        else:
            op = None
        users = g.consumers.get(c.output[0], [])
        if op is None or c.output[0] in g.outputs or not users:
            continue
        if all(_is_row_gather(g, u, c.output[0], op, codebook) for u in users):
            gathers.extend(users)
            helpers.append(c)
    if not gathers:
        return None, "no Gather/GatherND of the codebook rows by the ArgMin indices"
    return {"sub": sub, "mul": mul, "matmul": matmul, "gathers": gathers, "helpers": helpers,
            "z": matmul.input[0], "codebook": codebook,
            "sqnorm": np.ascontiguousarray(esq.reshape(-1).astype(np.float32))}, ""


def _is_row_gather(g: _Graph, node, idx_name, op, codebook) -> bool:
    """Gather(E, idx, axis=0) or GatherND(E, idx[..., None], batch_dims=0) of exactly the codebook rows."""
    if node.op_type != op or len(node.input) < 2 or node.input[1] != idx_name:
        return False
    if (op == "Gather" and g.attr(node, "axis", 0) != 0) or (op == "GatherND" and g.attr(node, "batch_dims", 0) != 0):
        return False
    table = g.const(node.input[0])
    return table is not None and table.shape == codebook.shape and np.array_equal(table.astype(np.float32), codebook)


def find_nearest_code_subgraphs(model) -> list[Rewrite]:
    """Report (without changing anything) which ArgMin nodes would be replaced."""
    g = _Graph(model.graph, _ranks(model))
    out = []
    for node in model.graph.node:
        if node.op_type == "ArgMin":
            m, why = _match(g, node)
            out.append(Rewrite(node.name or node.output[0], m is not None, why,
                               *(m["codebook"].shape if m else (0, 0))))
    return out


def replace_nearest_code(model, aot: bool = True):
    """Return (rewritten copy of `model`, list[Rewrite]). The input model is not modified."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    report: list[Rewrite] = []
    removed: set[int] = set()
    inserted: dict[int, list] = {}
    new_inits = []
    g = _Graph(graph, _ranks(model))
    position = {id(n): i for i, n in enumerate(graph.node)}
    taken = {o for n in graph.node for o in n.output} | set(g.inits) | {i.name for i in graph.input}
    for node in list(graph.node):
        if node.op_type != "ArgMin":
            continue
        m, why = _match(g, node)
        label = node.name or node.output[0]
        if m is None:
            report.append(Rewrite(label, False, why))
            continue
        base = _unique(f"{PLUGIN_NAMESPACE}_{PLUGIN_NAME}_{len(new_inits) // 2}", taken)
        cb_name, sq_name, idx32 = f"{base}.codebook", f"{base}.sqnorm", f"{base}.indices_i32"
        taken.update((cb_name, sq_name, idx32))
        new_inits += [numpy_helper.from_array(m["codebook"], cb_name), numpy_helper.from_array(m["sqnorm"], sq_name)]
        codes = m["gathers"][0].output[0]
        k, d = m["codebook"].shape
        plugin = helper.make_node(PLUGIN_NAME, [m["z"], cb_name, sq_name], [idx32, codes], name=base,
                                  domain=PLUGIN_DOMAIN, plugin_namespace=PLUGIN_NAMESPACE,
                                  plugin_version=PLUGIN_VERSION, aot=int(bool(aot)), embed_dim=int(d),
                                  n_codes=int(k))
        cast = helper.make_node("Cast", [idx32], [node.output[0]], name=f"{base}.cast_indices", to=TensorProto.INT64)
        extra = [helper.make_node("Identity", [codes], [gn.output[0]], name=f"{base}.codes_{i}")
                 for i, gn in enumerate(m["gathers"][1:], 1)]
        inserted[position[id(node)]] = [plugin, cast, *extra]
        dead = [node, m["sub"], m["mul"], m["matmul"], *m["gathers"], *m["helpers"]]
        removed.update(position[id(n)] for n in dead)
        report.append(Rewrite(label, True, "", k, d, [n.name or n.op_type for n in dead]))
    if not new_inits:
        return model, report
    nodes = []
    for i, n in enumerate(graph.node):
        nodes.extend(inserted.get(i, []))
        if i not in removed:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    _eliminate_dead(graph)
    if not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, 1))
    return model, report


def _unique(name, taken):
    out, i = name, 0
    while out in taken or f"{out}.codebook" in taken:
        i += 1
        out = f"{name}_{i}"
    return out


def _eliminate_dead(graph):
    """Drop nodes, initializers and value_info no longer reachable from the graph outputs."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:        # subgraphs (If/Loop bodies) read outer names
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    needed.update(i for n in sub.node for i in n.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    vi = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(vi)


def plugin_nodes(model):
    """The quantart::nearest_code plugin nodes of ``model`` (after ``replace_nearest_code``)."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_NAME and n.domain == PLUGIN_DOMAIN]
