"""The backend seam: one Runner per backend (Polygraphy style), so a new backend is one file."""
from __future__ import annotations

from typing import Mapping

import numpy as np


class Runner:
    """Runs the graphs of one exported model directory.

    Life cycle: ``activate()`` (create sessions / engines once), ``infer(graph, feeds)`` any number
    of times, ``deactivate()`` (free them). Usable as a context manager.
    """

    name = "base"

    def __init__(self, model_dir, manifest: dict, precision: str = "fp32", device: int = 0, **options):
        self.model_dir = model_dir
        self.manifest = manifest
        self.precision = precision
        self.device = device
        self.options = options
        self.active = False

    @classmethod
    def is_available(cls) -> tuple[bool, str]:
        """(True, "") when this backend can run here, else (False, reason)."""
        raise NotImplementedError

    def activate(self) -> None:
        raise NotImplementedError

    def infer(self, graph: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()
        return False
