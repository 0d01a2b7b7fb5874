"""The one utility layer of the project (torch-free, numpy only): every package uses these.

- :mod:`.atomic` — atomic writes: a file (temp file + ``os.replace``) or a whole directory.
- :mod:`.digest` — sha256 of files and bytes (hash a file once per load and pass the digest on).
- :mod:`.psnr` — PSNR in the two named conventions: uint8 images (peak 255) and [-1, 1] tensors (peak 2).
- :mod:`.errors` — the one-line error formatter for CLI messages and per-item failure reports.
"""
from .atomic import atomic_dir, atomic_open, write_bytes, write_json, write_text
from .digest import sha256_bytes, sha256_file
from .errors import one_line
from .psnr import PSNR_CAP_DB, psnr_from_mse, psnr_uint8, psnr_unit

__all__ = ["PSNR_CAP_DB", "atomic_dir", "atomic_open", "one_line", "psnr_from_mse", "psnr_uint8", "psnr_unit",
           "sha256_bytes", "sha256_file", "write_bytes", "write_json", "write_text"]
