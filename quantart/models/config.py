"""The model config layer: each model records its full constructor configuration.

The idea of diffusers' `register_to_config`: the `@register_to_config` decorator on a model's `__init__`
binds the call's arguments (defaults included) and stores them; `model.config` is that record plus
`"kind"` (`"stage1"` | `"stage2"`). Nothing is hand-copied, nothing is dropped, so
`build_model(model.config)` rebuilds the same network and `config.json` / checkpoints round-trip it.
Constructor arguments that are not configuration (the training `loss` module) are listed in the
class attribute `config_ignore`.
"""
from __future__ import annotations

import copy
import functools
import inspect
import json

DEFAULT_DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                        ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
# every key the official Encoder / Decoder read from ddconfig
DDCONFIG_KEYS = frozenset({"double_z", "z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult",
                           "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "give_pre_end"})
DDCONFIG_REQUIRED = ("ch", "out_ch", "num_res_blocks", "attn_resolutions", "in_channels", "resolution",
                     "z_channels")


class ArchitectureError(ValueError):
    """A model configuration that does not describe a buildable model; the message is one line."""


def _jsonable(value, where: str):
    """Plain JSON types (tuples → lists); anything else is refused with the argument's name."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item(), where)
    raise ArchitectureError(f"config argument {where} = {value!r} is not JSON-serialisable")


def register_to_config(init):
    """Decorator for a model `__init__`: record every argument (defaults applied, `config_ignore`
    names left out) as the model's configuration, readable as `model.config`.

    Args: init: the `__init__` to wrap. Returns: the wrapped `__init__`.
    Raises: ArchitectureError when an argument is not JSON-serialisable (the config must round-trip).
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        ignore = set(getattr(type(self), "config_ignore", ()))
        record = {name: _jsonable(copy.deepcopy(value), name) for name, value in list(bound.arguments.items())[1:]
                  if name not in ignore}
        init(self, *args, **kwargs)
        self._registered_config = record

    wrapper.__signature__ = signature
    return wrapper


class ConfigMixin:
    """`model.config`: {"kind": <config_kind>, **every registered constructor argument} (a copy).

    Subclasses set `config_kind` and decorate `__init__` with `@register_to_config`.
    """

    config_kind: str = ""
    config_ignore: tuple[str, ...] = ("loss",)

    @property
    def config(self) -> dict:
        """The full constructor configuration with "kind"; JSON-serialisable; a fresh copy."""
        return {"kind": self.config_kind, **copy.deepcopy(self._registered_config)}

    @classmethod
    def from_checkpoint(cls, path, config=None, trust: bool = False):
        """Load this model class from any supported checkpoint, in eval mode (diffusers'
        ``from_pretrained``): ``quantart.load_model(path, config, trust, expect=cls)``.

        Args: path: .ckpt / .pt / .safetensors file or a saved model directory; config: None (the
        stored config, else inferred), a model config dict, or the path of an official YAML; trust:
        allow arbitrary unpickling (only for files you trust).
        Raises: CheckpointError (one line), also when the checkpoint holds the other stage's model.
        """
        from ..checkpoint import load_model  # local: quantart.checkpoint builds models (layers stay acyclic)

        return load_model(path, config=config, trust=trust, expect=cls)

    @classmethod
    def config_parameters(cls) -> dict[str, inspect.Parameter]:
        """The constructor parameters recorded in the config (name → inspect.Parameter)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        return {p.name: p for p in params if p.name not in cls.config_ignore
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_ddconfig(ddconfig, where: str = "ddconfig") -> dict:
    """The official `ddconfig` (Encoder/Decoder arguments) checked: a dict, no unknown key, the
    required keys present. Returns a plain copy. Raises ArchitectureError naming the key."""
    if not isinstance(ddconfig, dict):
        raise ArchitectureError(f"{where} must be a mapping, got {type(ddconfig).__name__}")
    for key in ddconfig:
        if key not in DDCONFIG_KEYS:
            raise ArchitectureError(f"unknown key {where}.{key} ({suggest(key, DDCONFIG_KEYS)})")
    for key in DDCONFIG_REQUIRED:
        if key not in ddconfig:
            raise ArchitectureError(f"{where} lacks the required key {key!r}")
    return json.loads(json.dumps(_jsonable(ddconfig, where)))


def suggest(key: str, known) -> str:
    """'did you mean X?' for the closest known name, else the list of known names."""
    import difflib

    close = difflib.get_close_matches(str(key), sorted(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"


def official_config(kind: str = "stage2") -> dict:
    """The official landscape2art (Stage 2) / VQGAN f16-1024 (Stage 1) model config, as `model.config`."""
    cfg = {"kind": kind, "ddconfig": copy.deepcopy(DEFAULT_DDCONFIG), "n_embed": 1024, "embed_dim": 256}
    if kind == "stage2":
        cfg.update(use_residual=True, use_conv=True, use_selfatt=True, block_num=6)
    else:
        cfg.update(use_quantize=True, beta=0.25, legacy=True)
    return cfg


def latent_stride(ddconfig: dict) -> int:
    """Downsampling factor of the encoder: 2 ** (len(ch_mult) - 1)."""
    return 2 ** (len(ddconfig["ch_mult"]) - 1)


def check_image_size(height: int, width: int, stride: int) -> None:
    """H and W must be positive multiples of the latent stride; otherwise name the nearest valid size."""
    def nearest(v):
        return max(stride, int(round(v / stride)) * stride)

    if height % stride or width % stride or height < stride or width < stride:
        raise ValueError(f"image size {height}x{width} is not a multiple of the latent stride {stride}; "
                         f"the nearest valid size is {nearest(height)}x{nearest(width)}")
