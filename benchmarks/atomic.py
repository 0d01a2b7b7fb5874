"""Atomic writes for reports: the runtime's helper (temp file + os.replace)."""
from quantart_runtime.atomic import write_bytes, write_text

__all__ = ["write_bytes", "write_text"]
