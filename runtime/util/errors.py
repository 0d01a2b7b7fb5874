"""The one-line error formatter: every CLI message and per-item failure report goes through it."""
from __future__ import annotations


def one_line(exc: BaseException | str, limit: int = 300, with_type: bool = False) -> str:
    """The first non-empty line of ``exc`` (an exception or a string), at most ``limit`` characters.

    With ``with_type`` (or when the message is empty) the exception's class name is prefixed,
    e.g. ``"OSError: [Errno 28] No space left on device"``.
    """
    if isinstance(exc, BaseException):
        text = str(exc).strip()
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        if with_type or not first:
            first = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    else:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return first
