"""Training of both QuantArt stages on PyTorch Lightning (one CPU to many GPUs/nodes)."""
from .config import ConfigError, apply_overrides, from_yaml, learning_rate, preset
from .modules import NonFiniteLossError, Stage1Module, Stage2Module
from .runner import TrainResult, build_dataset, build_training_model, fit

__all__ = ["ConfigError", "NonFiniteLossError", "Stage1Module", "Stage2Module", "TrainResult", "apply_overrides",
           "build_dataset", "build_training_model", "fit", "from_yaml", "learning_rate", "preset"]
