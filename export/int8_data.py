"""The INT8 export's images: the user's calibration folder split, seeded, into disjoint calibration and
validation sets; calibration images augmented (flips and crops); each set hashed for the manifest.

Identical files (same bytes) count once, so one image can never be on both sides. The split orders
the images by their sha256 (not their names) and draws the validation set with a seeded generator:
the same folder gives the same split anywhere. Augmented views are made from calibration images only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantart_runtime.util import sha256_file

from .errors import ExportError

SEED = 0
VALIDATION_FRACTION = 0.5       # of the distinct images, at least one on each side
MAX_CALIBRATION_IMAGES = 32     # source images (before augmentation)
MAX_VALIDATION_IMAGES = 16
AUGMENT_VIEWS = ("image", "flip", "crop", "crop-flip")


@dataclass
class Split:
    """Calibration and validation files (disjoint), with each file's sha256 and each set's hash."""
    calibration: list[Path]
    validation: list[Path]
    digests: dict[str, str]       # file name -> sha256
    seed: int
    duplicates: int = 0           # files left out as byte-identical to another
    unreadable: int = 0           # files left out as not readable images

    def set_sha256(self, files) -> str:
        """sha256 of a set: of its files' sha256, sorted, one per line (independent of names and order)."""
        lines = "".join(f"{d}\n" for d in sorted(self.digests[p.name] for p in files))
        return hashlib.sha256(lines.encode()).hexdigest()

    def record(self) -> dict:
        """The manifest's description of the split."""
        return {"seed": self.seed, "calibration_images": len(self.calibration),
                "validation_images": len(self.validation), "duplicates_left_out": self.duplicates,
                "unreadable_left_out": self.unreadable,
                "calibration_sha256": self.set_sha256(self.calibration),
                "validation_sha256": self.set_sha256(self.validation)}


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return False


def split_images(files, seed: int = SEED, fraction: float = VALIDATION_FRACTION) -> Split:
    """Split image ``files`` into disjoint calibration and validation sets (see the module docstring).

    Files that are not readable images are left out (counted). Raises ``ExportError`` (one line) when
    fewer than two distinct readable images are given.
    """
    by_digest: dict[str, Path] = {}
    unreadable = 0
    for path in sorted(Path(p) for p in files):
        if _readable(path):
            by_digest.setdefault(sha256_file(path), path)
        else:
            unreadable += 1
    n = len(by_digest)
    if n < 2:
        raise ExportError(f"--int8-calibration needs at least 2 distinct images (calibration and held-out "
                          f"validation are disjoint), got {n}")
    ordered = sorted(by_digest)                       # by content, not by name
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(n * fraction))), n - 1)
    validation = sorted(by_digest[ordered[i]] for i in order[:n_val])[:MAX_VALIDATION_IMAGES]
    calibration = sorted(by_digest[ordered[i]] for i in order[n_val:])[:MAX_CALIBRATION_IMAGES]
    return Split(calibration, validation, {p.name: d for d, p in by_digest.items()}, seed,
                 duplicates=len(list(files)) - n - unreadable, unreadable=unreadable)


def _views(im, size: int, rng, augment: bool) -> list[np.ndarray]:
    from PIL import Image, ImageOps

    fit = ImageOps.fit(im, (size, size), Image.Resampling.BICUBIC)
    out = [np.asarray(fit, dtype=np.uint8)]
    if not augment:
        return out
    out.append(np.asarray(ImageOps.mirror(fit), dtype=np.uint8))
    side = min(im.width, im.height)
    crop = max(1, int(side * rng.uniform(0.55, 0.8)))
    left, top = int(rng.integers(0, im.width - crop + 1)), int(rng.integers(0, im.height - crop + 1))
    view = im.crop((left, top, left + crop, top + crop)).resize((size, size), Image.Resampling.BICUBIC)
    out.append(np.asarray(view, dtype=np.uint8))
    out.append(np.asarray(ImageOps.mirror(view), dtype=np.uint8))
    return out


def load_images(files, size: int, augment: bool = False, seed: int = SEED) -> np.ndarray:
    """(N, size, size, 3) uint8: each readable image as RGB, centre-cropped square and resized (bicubic);
    with ``augment`` also its mirror and a seeded random crop (55-80 % of the short side) and its mirror
    (``AUGMENT_VIEWS``). Unreadable files are skipped; raises ``ExportError`` when none can be read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    rng = np.random.default_rng(seed)
    out, bad = [], []
    for path in files:
        try:
            with Image.open(path) as im:
                out.extend(_views(ImageOps.exif_transpose(im).convert("RGB"), size, rng, augment))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            bad.append(Path(path).name)
    if not out:
        raise ExportError(f"--int8-calibration: none of the {len(files)} image files can be read "
                          f"(first: {bad[0]})")
    return np.stack(out)
