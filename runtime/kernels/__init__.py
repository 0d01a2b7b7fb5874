"""GPU kernels of the runtime (Triton): the fused nearest-codebook search used by the TensorRT plugin."""
