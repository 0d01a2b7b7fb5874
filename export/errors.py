"""The export's two failures: bad input (``ExportError``) and graphs that disagree with PyTorch
(``VerificationError``). Their own module, so every export module can raise them without importing
the pipeline."""
from __future__ import annotations


class ExportError(ValueError):
    """Bad input: missing or unreadable checkpoint, unsupported architecture, bad option, unwritable
    or existing output. The message is one line (CLI: exit code 2)."""


class VerificationError(RuntimeError):
    """The exported graphs do not match PyTorch within the thresholds (CLI: exit code 1).
    `checks` holds every result; nothing was written."""

    def __init__(self, message: str, checks: list):
        super().__init__(message)
        self.checks = checks
