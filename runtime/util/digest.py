"""sha256 of files and bytes. Hash a file once per load and pass the hex digest on."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of the file at ``path``, read in ``chunk``-byte blocks. Raises ``OSError``."""
    digest = hashlib.sha256()
    with open(Path(path), "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
