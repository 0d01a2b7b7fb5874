"""The backend seam, in Polygraphy's shape: one Runner per backend, so a new backend is one file.

The base class owns the life cycle and the checks; a backend implements only the ``*_impl`` hooks:

    activate()    -> activate_impl()      create sessions / load engines, once
    infer(...)    -> infer_impl(...)      after the base checked state, graph and inputs
    deactivate()  -> deactivate_impl()    free them (always marks the runner inactive)

``infer`` checks that the runner is active, that the graph is one of the model's, and that the feeds
carry exactly the manifest's input names with its dtypes and ranks. Options a backend does not
declare in ``OPTIONS`` raise ``TypeError`` naming them.

Device data path: ``infer(graph, feeds, host_outputs=False)`` returns backend-native values (an
OrtValue, a device tensor, ...) that can be fed to the next ``infer`` without passing through numpy;
``to_device`` uploads a host array once (e.g. a style code) and ``to_host`` brings a value back.
Host-only backends return numpy arrays for both. ``broadcast(value, batch)`` repeats a batch-1
value along axis 0 where it lives (on the device for device backends). ``transfers`` counts
host→device ("h2d"), device→host ("d2h") and device→device ("d2d") copies of backends whose
values live apart from numpy (``DEVICE_VALUES = True``), so a test can check that graph-to-graph
hand-off makes none: the base counts a numpy feed as one h2d, each host output as one d2h.
``staging(shape, dtype, slot)`` hands out a reusable host array to preprocess into (pinned memory on
GPU backends, so the one upload per batch is a true asynchronous DMA).
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

import numpy as np

_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


class Runner:
    """Runs the graphs of one exported model directory (see the module docstring for the contract).

    Args:
        model_dir: the exported model directory.
        manifest: its parsed ``manifest.json`` (``quantart_runtime.manifest.load_manifest``).
        precision: which graph set to run (``"fp32"``, ``"fp16"``; backends may add more).
        device: device ordinal for GPU backends.
        **options: backend options; each must be named in the class's ``OPTIONS``.

    Raises:
        TypeError: an option the backend does not know.
    """

    name = "base"
    #: option names this backend accepts (anything else is a TypeError).
    OPTIONS: frozenset = frozenset()
    #: True when this backend's native values are not numpy arrays (transfers are then counted).
    DEVICE_VALUES = False

    @property
    def pinned_staging(self) -> bool:
        """True when ``staging()`` hands out pinned host memory (worth preprocessing into)."""
        return False

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            known = ", ".join(sorted(self.OPTIONS)) or "none"
            raise TypeError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)} "
                            f"(this backend takes: {known})")
        self.model_dir = model_dir
        self.manifest = manifest
        self.precision = precision
        self.device = device
        self.options = dict(options)
        self.active = False
        self.transfers: Counter = Counter()
        self._staging: dict = {}

    # -- what a backend implements -------------------------------------------------------
    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, "") when this backend can run here, else (False, reason)."""
        raise NotImplementedError

    def activate_impl(self) -> None:
        """Create sessions / engines for every graph of ``self.precision``."""
        raise NotImplementedError

    def infer_impl(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool) -> dict[str, Any]:
        """Run ``graph`` on checked ``feeds``; numpy outputs when ``host_outputs`` else native values."""
        raise NotImplementedError

    def deactivate_impl(self) -> None:
        """Free what ``activate_impl`` created."""
        raise NotImplementedError

    def is_device_value(self, value) -> bool:
        """True for this backend's native (device-resident) values; numpy arrays are host values."""
        return False

    def value_info(self, value) -> tuple[np.dtype, int]:
        """(dtype, rank) of a native value, for the input checks."""
        raise NotImplementedError

    def to_device_impl(self, array: np.ndarray):
        """Upload ``array`` once; host-only backends return it unchanged."""
        return array

    def to_host_impl(self, value) -> np.ndarray:
        """Copy a native value back to a numpy array."""
        return np.asarray(value)

    def broadcast_impl(self, value, batch: int):
        """``value`` (batch 1) repeated ``batch`` times along axis 0, where it lives."""
        host = np.asarray(value)
        return np.ascontiguousarray(np.broadcast_to(host, (batch,) + host.shape[1:]))

    def staging_impl(self, shape: tuple, dtype, slot: int) -> np.ndarray:
        """A reusable host array for slot ``slot`` (host backends: a plain numpy array)."""
        buf = self._staging.get(slot)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != np.dtype(dtype):
            buf = self._staging[slot] = np.empty(shape, dtype)
        return buf

    # -- the life cycle the base class owns -------------------------------------------------
    def activate(self) -> None:
        """Create what the graphs need (idempotent). Raises ``ModelError`` / ``BackendError``."""
        if self.active:
            return
        try:
            self.activate_impl()
        except BaseException:
            # A failed activation frees what it created (streams, sessions, half-built engines):
            # deactivate_impl must tolerate partial state; its own error must not hide the first.
            try:
                self.deactivate_impl()
            except Exception:
                pass
            raise
        self.active = True

    def deactivate(self) -> None:
        """Free sessions / engines (idempotent); the runner can be activated again."""
        if not self.active:
            return
        try:
            self.deactivate_impl()
        finally:
            self.active = False

    def infer(self, graph: str, feeds: Mapping[str, Any], host_outputs: bool = True) -> dict[str, Any]:
        """Run one graph.

        Args:
            graph: a graph name of the manifest (e.g. ``"content_encoder"``).
            feeds: {input name: numpy array or a native value of this runner}.
            host_outputs: True for numpy outputs; False to keep them as native values for the next call.
        Returns:
            {output name: value}.
        Raises:
            RuntimeError: not activated. KeyError: unknown graph. ValueError: wrong input names,
            dtypes or ranks.
        """
        if not self.active:
            raise RuntimeError(f"{type(self).__name__}.infer called before activate()")
        self.check_feeds(graph, feeds)
        outputs = self.infer_impl(graph, feeds, host_outputs)
        if self.DEVICE_VALUES:
            self.transfers["h2d"] += sum(isinstance(v, np.ndarray) for v in feeds.values())
            if host_outputs:
                self.transfers["d2h"] += len(outputs)
        return outputs

    def to_device(self, array: np.ndarray):
        """Upload a host array once (counted as one "h2d" transfer on device backends)."""
        if not self.active:
            raise RuntimeError(f"{type(self).__name__}.to_device called before activate()")
        if self.DEVICE_VALUES:
            self.transfers["h2d"] += 1
        return self.to_device_impl(np.ascontiguousarray(array))

    def to_host(self, value) -> np.ndarray:
        """A numpy copy of ``value`` (numpy arrays are returned as they are; one "d2h" otherwise)."""
        if isinstance(value, np.ndarray):
            return value
        if self.DEVICE_VALUES:
            self.transfers["d2h"] += 1
        return self.to_host_impl(value)

    def broadcast(self, value, batch: int):
        """``value`` with batch 1 repeated to ``batch`` along axis 0 without leaving the device
        (counted as one "d2d" copy on device backends); a numpy value gives a numpy array.

        Raises ``ValueError`` when ``value``'s batch is not 1 or ``batch`` < 1.
        """
        batch = int(batch)
        if isinstance(value, np.ndarray):
            lead = value.shape[0] if value.ndim else None
        else:
            lead = self.value_shape(value)[0]
        if lead != 1 or batch < 1:
            raise ValueError(f"broadcast: need a batch-1 value and batch >= 1, got batch {lead} -> {batch}")
        if isinstance(value, np.ndarray):
            return np.ascontiguousarray(np.broadcast_to(value, (batch,) + value.shape[1:]))
        if batch == 1:
            return value
        if self.DEVICE_VALUES:
            self.transfers["d2d"] += 1
        return self.broadcast_impl(value, batch)

    def value_shape(self, value) -> tuple[int, ...]:
        """Shape of a native value (numpy arrays: their shape)."""
        return tuple(np.asarray(value).shape)

    def staging(self, shape, dtype=np.float32, slot: int = 0) -> np.ndarray:
        """A reusable host array of ``shape``/``dtype`` to fill before ``infer`` (pinned memory on GPU
        backends). Slots let a producer fill batch n+1 while batch n is in flight; a slot's array is
        only handed out again once the copy that read it has finished."""
        return self.staging_impl(tuple(int(s) for s in shape), np.dtype(dtype), int(slot))

    def graph_inputs(self, graph: str) -> list[dict]:
        """The manifest's input descriptions ({name, dtype, shape}) of ``graph``."""
        graphs = self.manifest["graphs"][self.precision]
        if graph not in graphs:
            raise KeyError(f"{type(self).__name__}: model has no graph {graph!r} "
                           f"(graphs: {', '.join(graphs)})")
        return [io for io in graphs[graph].get("inputs", []) if isinstance(io, dict) and "name" in io]

    def check_feeds(self, graph: str, feeds: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless ``feeds`` match the manifest's input names, dtypes and ranks."""
        inputs = self.graph_inputs(graph)
        if not inputs:
            return
        expected = [io["name"] for io in inputs]
        if sorted(feeds) != sorted(expected):
            raise ValueError(f"{graph}: inputs {sorted(feeds)} given, the graph takes {sorted(expected)}")
        for io in inputs:
            value = feeds[io["name"]]
            if isinstance(value, np.ndarray):
                dtype, rank = value.dtype, value.ndim
            elif self.is_device_value(value):
                dtype, rank = self.value_info(value)
            else:
                raise ValueError(f"{graph}: input {io['name']!r} is a {type(value).__name__}, "
                                 f"not a numpy array or a {self.name} value")
            want = _DTYPES.get(io.get("dtype"))
            if want is not None and np.dtype(dtype) != np.dtype(want):
                raise ValueError(f"{graph}: input {io['name']!r} has dtype {np.dtype(dtype)}, "
                                 f"the graph takes {np.dtype(want)}")
            shape = io.get("shape")
            if isinstance(shape, list) and rank != len(shape):
                raise ValueError(f"{graph}: input {io['name']!r} has rank {rank}, the graph takes "
                                 f"rank {len(shape)} {shape}")

    def __enter__(self):
        """Activate; the runner is deactivated when the ``with`` block ends."""
        self.activate()
        return self

    def __exit__(self, *exc):
        """Deactivate (exceptions propagate)."""
        self.deactivate()
        return False
