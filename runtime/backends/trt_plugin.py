"""quantart::nearest_code as a TensorRT quickly-deployable plugin (tensorrt.plugin), AOT only.

The ONNX node written by graph_rewrite (op "nearest_code", attributes plugin_namespace="quantart",
aot=1, embed_dim, n_codes) is resolved by the ONNX parser to this registration. The AOT
implementation returns the Triton kernel's PTX, so serialized engines run without Python.
Kernel parameters, in TensorRT's order: z, codebook, sqnorm (inputs), n_rows, n_codes (SymInt32
extras), indices, codes (outputs); Triton's trailing scratch pointers are unused and left null.
"""
from __future__ import annotations

from typing import List, Tuple, Union

PLUGIN_ID = "quantart::nearest_code"
_registered: dict = {}


def register_nearest_code_plugin(arch: int, ptx_version: int | None = None) -> None:
    """Register the plugin once per process for one GPU architecture (e.g. 90 for sm_90)."""
    if _registered:
        if _registered["arch"] != arch or _registered["ptx_version"] != ptx_version:
            raise RuntimeError(f"{PLUGIN_ID} is already registered for sm_{_registered['arch']}; "
                               f"one process builds for one GPU architecture")
        return
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from ..kernels.nearest_code import compile_ptx

    @trtp.register(PLUGIN_ID)
    def nearest_code_desc(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                          embed_dim: int, n_codes: int) -> Tuple[trtp.TensorDesc, trtp.TensorDesc]:
        indices = trtp.from_shape_expr((z.shape_expr[0],), dtype=trt.int32)
        return indices, z.like()

    @trtp.autotune(PLUGIN_ID)
    def nearest_code_autotune(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                              outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32, INT32, FP32|FP16", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def nearest_code_aot(z: trtp.TensorDesc, codebook: trtp.TensorDesc, sqnorm: trtp.TensorDesc,
                         embed_dim: int, n_codes: int, outputs: Tuple[trtp.TensorDesc], tactic: int
                         ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        dtype = "fp16" if z.dtype == trt.float16 else "fp32"
        name, ptx, lp = compile_ptx(arch, dtype, embed_dim, ptx_version=ptx_version)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(z.shape_expr[0], lp.block_n)
        launch.block_x = lp.threads_per_block
        launch.shared_mem = lp.shared_mem
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(z.shape_expr[0]), trtp.SymInt32(codebook.shape_expr[0])])
        return name.encode(), ptx.encode(), launch, extra

    _registered.update(arch=arch, ptx_version=ptx_version)
