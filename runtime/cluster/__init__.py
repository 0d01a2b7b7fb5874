"""Beyond one machine: batch stylization on Ray Data and an HTTP service on Ray Serve.

Ray is imported only when these are used, so ``import quantart_runtime`` works without it.
``stylize_dataset`` / ``Summary`` come from ``.batch``; ``build_app`` / ``start_service`` from ``.serve``.
"""
from __future__ import annotations

__all__ = ["stylize_dataset", "Summary", "build_app", "start_service"]


def __getattr__(name):
    if name in ("stylize_dataset", "Summary"):
        from . import batch

        return getattr(batch, name)
    if name in ("build_app", "start_service"):
        from . import serve

        return getattr(serve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
