"""The streaming schedule: the model cut at every GroupNorm into local segments and attention pieces.

Between two GroupNorms the VQGAN is local (3×3 convolutions, swish, residual adds, stride-2 resampling),
so a segment run on a tile with a halo of its receptive field gives the untiled values exactly; a
GroupNorm needs only the per-group sums and sums of squares of its input over the whole image, which
the runtime accumulates (float64) while the segment before it writes its tiles. Attention is split into
``attn_kv`` (keys and values of every token, pointwise) and ``attn_out`` (a tile of queries against all
keys: exact per query, since softmax rows are independent, and memory linear in the tokens).

``build_schedule(model)`` returns the manifest's ``streaming`` section (without graph entries) and, per
graph, what ``segment_graphs.build_segment`` needs. Four chains, one per untiled graph:

    content_encoder: image -> content_latent            style_encoder: style_image -> style_latent, style_indices
    sga: content_latent, style_latent -> stylized_latent, indices      decoder: stylized_latent -> output_image

Each step: ``graph``, ``op``, ``inputs`` (tiled: read over the tile's window), ``whole`` (k, v: every
token), ``norm`` (the tensor whose statistics the step's GroupNorm takes), ``ratio``, ``outputs``
({graph output: tensor}), ``stats`` (the outputs whose graph also gives ``<out>_ref`` / ``_sum`` / ``_sq``,
their row statistics), ``resample`` ("same", "down", "up"), ``pre_halo`` (pixels of context the step
needs at its input resolution before resampling) and ``post_halo`` (after it). Tensors: ``domain``
("content" or "style"), ``stride``, ``channels``, ``dtype`` and ``groups`` (when a GroupNorm reads it).
"""
from __future__ import annotations

from pathlib import Path

from .segment_graphs import build_segment

SCHEDULE_VERSION = 2   # 2: steps list ``stats``, the outputs whose graphs give their row statistics
NORM_EPS = 1e-6


class _Program:
    def __init__(self):
        self.tensors: dict[str, dict] = {}
        self.steps: list[dict] = []
        self.parts: dict[str, dict] = {}

    def tensor(self, name: str, domain: str, stride: int, channels: int, dtype: str = "float32") -> str:
        self.tensors[name] = {"domain": domain, "stride": stride, "channels": int(channels), "dtype": dtype,
                              "groups": None}
        return name

    def step(self, chain: str, op: str, module, x: str, out_channels: int, *, skip: str | None = None,
             norm=None, kv: tuple[str, str] | None = None, resample=None, pre: int = 0, extra: dict | None = None,
             ratio: str | None = None, outputs: dict | None = None) -> str:
        """Append a step reading tensor ``x``; returns its (first) output tensor's name."""
        src = self.tensors[x]
        kind = "same" if resample is None else ("down" if type(resample).__name__ == "Downsample" else "up")
        stride = src["stride"] * (2 if kind == "down" else 1) // (2 if kind == "up" else 1)
        name = f"s_{chain}_{sum(s['chain'] == chain for s in self.steps):03d}"
        if outputs is None:
            outputs = {"y": self.tensor(f"{chain}.{name[-3:]}", src["domain"], stride, out_channels)}
        if norm is not None:   # the GroupNorm this step applies reads x with these groups
            self.tensors[x]["groups"] = int(norm.num_groups)
        post = 1 if kind == "up" and resample.with_conv else 0
        step = {"graph": name, "chain": chain, "op": op, "inputs": {"x": x, **({"skip": skip} if skip else {})},
                "whole": {"k": kv[0], "v": kv[1]} if kv else {}, "norm": x if norm is not None else None,
                "ratio": ratio, "outputs": outputs, "resample": kind, "pre_halo": pre, "post_halo": post}
        self.steps.append(step)
        self.parts[name] = {"module": module, "resample": resample, **(extra or {})}
        return next(iter(outputs.values()))

    # -- blocks ---------------------------------------------------------------------------------
    def resnet(self, chain, block, x, resample=None) -> str:
        h = self.step(chain, "resnet_a", block, x, block.out_channels, norm=block.norm1, pre=1)
        return self.step(chain, "resnet_b", block, h, block.out_channels, skip=x, norm=block.norm2,
                         resample=resample, pre=1)

    def attn(self, chain, block, x, key=None, resample=None) -> str:
        c = block.in_channels
        src = self.tensors[key or x]
        k_name = f"{chain}.k{len(self.steps):03d}"
        kv = {"k": self.tensor(k_name, src["domain"], src["stride"], c),
              "v": self.tensor(k_name.replace(".k", ".v"), src["domain"], src["stride"], c)}
        self.step(chain, "attn_kv", block, key or x, c, norm=block.norm, outputs=kv)
        return self.step(chain, "attn_out", block, x, c, norm=block.norm, kv=(kv["k"], kv["v"]), resample=resample)


def _encoder(p: _Program, chain: str, enc, quant_conv, image: str, domain: str, outputs: dict, codebook=None):
    t = p.step(chain, "conv_in", enc.conv_in, image, enc.conv_in.out_channels, pre=1)
    for i_level in range(enc.num_resolutions):
        level = enc.down[i_level]
        down = level.downsample if i_level != enc.num_resolutions - 1 else None
        for i_block in range(enc.num_res_blocks):
            last = i_block == enc.num_res_blocks - 1
            t = p.resnet(chain, level.block[i_block], t, down if last and not len(level.attn) else None)
            if len(level.attn):
                t = p.attn(chain, level.attn[i_block], t, resample=down if last else None)
    t = p.resnet(chain, enc.mid.block_1, t)
    t = p.attn(chain, enc.mid.attn_1, t)
    t = p.resnet(chain, enc.mid.block_2, t)
    p.step(chain, "head", enc.norm_out, t, quant_conv.out_channels, norm=enc.norm_out, pre=1,
           extra={"conv_out": enc.conv_out, "post": quant_conv, "codebook": codebook}, outputs=outputs)


def _decoder(p: _Program, chain: str, model, latent: str, output: str):
    dec = model.decoder
    t = p.step(chain, "conv_in", dec.conv_in, latent, dec.conv_in.out_channels, pre=1,
               extra={"pre": model.post_quant_conv})
    t = p.resnet(chain, dec.mid.block_1, t)
    t = p.attn(chain, dec.mid.attn_1, t)
    t = p.resnet(chain, dec.mid.block_2, t)
    for i_level in reversed(range(dec.num_resolutions)):
        level = dec.up[i_level]
        up = level.upsample if i_level != 0 else None
        for i_block in range(dec.num_res_blocks + 1):
            last = i_block == dec.num_res_blocks
            t = p.resnet(chain, level.block[i_block], t, up if last and not len(level.attn) else None)
            if len(level.attn):
                t = p.attn(chain, level.attn[i_block], t, resample=up if last else None)
    p.step(chain, "head", dec.norm_out, t, dec.conv_out.out_channels, norm=dec.norm_out, pre=1,
           extra={"conv_out": dec.conv_out}, outputs={"y": output})


def _sga(p: _Program, model, content: str, style: str, outputs: dict):
    chain = "sga"
    d = p.tensors[content]["channels"]
    quant = p.tensor("sga.quant_x", "content", p.tensors[content]["stride"], d)
    codes = p.tensor("sga.content_indices", "content", p.tensors[content]["stride"], 1, "int64")
    t = p.step(chain, "nearest_code", None, content, d, ratio="content_ratio",
               extra={"codebook": model.quantize_enc.embedding.weight},
               outputs={"latent": quant, "indices": codes})
    for block in model.model_x2y.blocks:
        if block.use_conv:
            t = p.resnet(chain, block.res_block, t)
        if block.use_selfatt:
            t = p.attn(chain, block.self_attn_block, t)
        t = p.attn(chain, block.attn_block, t, key=style)
    p.step(chain, "nearest_code", None, t, d, ratio="output_ratio",
           extra={"codebook": model.quantize_dec.embedding.weight}, outputs=outputs)


def build_schedule(model) -> tuple[dict, dict]:
    """(the manifest's ``streaming`` section without ``graphs``, {graph name: build parts}) of a Stage 2
    StyleTransfer. Raises ``ValueError`` for another kind."""
    if model.config["kind"] != "stage2":
        raise ValueError("streaming schedules are built for Stage 2 models")
    stride, d = int(model.stride), int(model.config["embed_dim"])
    p = _Program()
    p.tensor("image", "content", 1, 3)
    p.tensor("style_image", "style", 1, 3)
    for name, domain in (("content_latent", "content"), ("style_latent", "style"), ("stylized_latent", "content")):
        p.tensor(name, domain, stride, d)
    p.tensor("style_indices", "style", stride, 1, "int64")
    p.tensor("indices", "content", stride, 1, "int64")
    p.tensor("output_image", "content", 1, 3)
    _encoder(p, "content_encoder", model.encoder, model.quant_conv, "image", "content", {"y": "content_latent"})
    _encoder(p, "style_encoder", model.encoder_real, model.quant_conv_real, "style_image", "style",
             {"latent": "style_latent", "indices": "style_indices"}, model.quantize_dec.embedding.weight)
    _sga(p, model, "content_latent", "style_latent", {"latent": "stylized_latent", "indices": "indices"})
    _decoder(p, "decoder", model, "stylized_latent", "output_image")
    for s in p.steps:   # outputs a later GroupNorm reads: their graphs give row statistics (segment_graphs)
        s["stats"] = [k for k, t in s["outputs"].items()
                      if p.tensors[t]["groups"] and p.tensors[t]["dtype"] == "float32"]
    chains = {}
    for chain, ins, outs in (("content_encoder", ["image"], ["content_latent"]),
                             ("style_encoder", ["style_image"], ["style_latent", "style_indices"]),
                             ("sga", ["content_latent", "style_latent"], ["stylized_latent", "indices"]),
                             ("decoder", ["stylized_latent"], ["output_image"])):
        steps = [{k: v for k, v in s.items() if k != "chain"} for s in p.steps if s["chain"] == chain]
        chains[chain] = {"inputs": ins, "outputs": outs, "steps": steps}
    section = {"version": SCHEDULE_VERSION, "norm_eps": NORM_EPS, "latent_stride": stride,
               "tensors": p.tensors, "chains": chains}
    return section, p.parts


def export_segments(model, directory: Path, log=lambda _m: None) -> dict:
    """Write every segment graph (FP32) into ``directory/streaming/`` and return the manifest's
    ``streaming`` section with its ``graphs`` entries ({"fp32": {name: entry}})."""
    import time

    import onnx

    from quantart_runtime.util import atomic_open, sha256_file

    t0 = time.perf_counter()
    section, parts = build_schedule(model)
    folder = Path(directory) / "streaming"
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for chain in section["chains"].values():
        for step in chain["steps"]:
            name = step["graph"]
            graph = build_segment(name, step, parts[name], section["tensors"])
            graph = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True)
            path = folder / f"{name}.onnx"
            with atomic_open(path) as f:
                f.write(graph.SerializeToString())
            entries[name] = {"file": f"streaming/{name}.onnx", "sha256": sha256_file(path), "precision": "fp32",
                             "inputs": [_io(v) for v in graph.graph.input],
                             "outputs": [_io(v) for v in graph.graph.output]}
    section["graphs"] = {"fp32": entries}
    log(f"exported {len(entries)} streaming segment graphs in {time.perf_counter() - t0:.1f} s")
    return section


def _io(value) -> dict:
    t = value.type.tensor_type
    dtype = {1: "float32", 7: "int64"}[t.elem_type]
    return {"name": value.name, "dtype": dtype,
            "shape": [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]}
