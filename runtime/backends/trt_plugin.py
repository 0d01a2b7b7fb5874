"""quantart::nearest_code as a TensorRT quickly-deployable plugin (``tensorrt.plugin``), AOT only.

The ONNX node written by graph_rewrite (op "nearest_code", attributes plugin_namespace="quantart",
aot=1, embed_dim, n_codes) is resolved by the ONNX parser to this registration. The AOT
implementation returns the Triton kernel's PTX, so serialized engines run without Python: the
plugin is registered only to *build* an engine (``trt_engine``), never to load one.

Kernel parameters, in TensorRT's order: z, codebook, sqnorm (inputs), n_rows, n_codes (SymInt32
extras), indices, codes (outputs), and nothing else: TensorRT's AOT launch passes exactly these
(samples/python/quickly_deployable_plugins), so ``compile_ptx`` strips Triton's two trailing
scratch pointers from the PTX entry (they are unreferenced: the kernel needs no scratch).

No ``from __future__ import annotations`` here, on purpose: ``tensorrt.plugin`` validates the
decorated functions with ``issubclass(param.annotation, TensorDesc)`` (its ``_validate.py``), which
raises ``TypeError`` on the string annotations that future import would leave.
"""
from typing import List, Tuple, Union

PLUGIN_ID = "quantart::nearest_code"
_registered: dict = {}


def plugin_functions(trt, trtp, arch: int, ptx_version):
    """The plugin's undecorated functions {"register", "autotune", "aot_impl"}.

    ``trt`` / ``trtp`` are the ``tensorrt`` and ``tensorrt.plugin`` modules; the annotations are
    evaluated here, at definition time, against ``trtp``'s classes (what ``_validate.py`` checks).
    ``arch`` (e.g. 90) and ``ptx_version`` (e.g. 88, already capped) choose the PTX.
    """
    from ..kernels.nearest_code import compile_ptx

    def nearest_code_desc(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                          embed_dim: int, n_codes: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        """Output descriptors: int32 indices (N,) and codes shaped and typed like z (N, D)."""
        indices = trtp.from_shape_expr((z.shape_expr[0],), dtype=trt.int32)
        return indices, z.like()

    def nearest_code_autotune(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                              outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        """Type/format combinations: z, codebook and codes FP32 or FP16; sqnorm FP32; indices INT32."""
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32, INT32, FP32|FP16", "LINEAR")]

    def nearest_code_aot(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                         embed_dim: int, n_codes: int, outputs: Tuple[trtp.TensorDesc, trtp.TensorDesc],
                         tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                                               trtp.SymExprs]:
        """(kernel name, PTX, launch parameters, extra scalar arguments n_rows and n_codes)."""
        dtype = "fp16" if z.dtype == trt.float16 else "fp32"
        name, ptx, lp = compile_ptx(arch, dtype, embed_dim, ptx_version=ptx_version)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(z.shape_expr[0], lp.block_n)
        launch.block_x = lp.threads_per_block
        launch.shared_mem = lp.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(z.shape_expr[0]), trtp.SymInt32(codebook.shape_expr[0])])
        return name.encode(), ptx.encode(), launch, extra

    return {"register": nearest_code_desc, "autotune": nearest_code_autotune, "aot_impl": nearest_code_aot}


def register_nearest_code_plugin(arch: int, ptx_version: int | None = None) -> None:
    """Register the plugin once per process for one GPU architecture (e.g. 90 for sm_90).

    Raises ``RuntimeError`` when asked for another architecture or PTX ISA in the same process
    (TensorRT's plugin registry holds one definition per name).
    """
    if _registered:
        if _registered["arch"] != arch or _registered["ptx_version"] != ptx_version:
            raise RuntimeError(f"{PLUGIN_ID} is already registered for sm_{_registered['arch']}; "
                               f"one process builds for one GPU architecture")
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    fns = plugin_functions(trt, trtp, arch, ptx_version)
    trtp.register(PLUGIN_ID)(fns["register"])
    trtp.autotune(PLUGIN_ID)(fns["autotune"])
    trtp.aot_impl(PLUGIN_ID)(fns["aot_impl"])
    _registered.update(arch=arch, ptx_version=ptx_version)
