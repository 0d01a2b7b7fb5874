"""quantart_runtime: run exported QuantArt models without torch (ONNX Runtime, TensorRT)."""
