"""Datasets for training QuantArt (``quantart.data``).

Sample dictionaries (tensors float32, (3, size, size), values in [-1, 1]):

* ``ImageFolderDataset`` (Stage 1): ``{"image", "path"}``
* ``UnpairedDataset`` / ``PairedDataset`` (Stage 2):
  ``{"content", "style", "content_path", "style_path"}``

See ``quantart.data.datasets`` for seeding, epochs and fault handling.
"""
from .checks import FailureLog, ScanResult, scan_images, verify_image
from .config import dataset_from_config
from .datasets import ImageFolderDataset, ImagePool, PairedDataset, UnpairedDataset
from .errors import DataError, DataWarning
from .folders import (
    IMAGE_EXTENSIONS,
    collect_images,
    find_images,
    is_image_file,
    read_csv_filter,
    read_image_list,
)
from .images import load_rgb, load_tensor, resize_and_crop, to_rgb, to_tensor

__all__ = [
    "DataError",
    "DataWarning",
    "FailureLog",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImagePool",
    "PairedDataset",
    "ScanResult",
    "UnpairedDataset",
    "collect_images",
    "dataset_from_config",
    "find_images",
    "is_image_file",
    "load_rgb",
    "load_tensor",
    "read_csv_filter",
    "read_image_list",
    "resize_and_crop",
    "scan_images",
    "to_rgb",
    "to_tensor",
    "verify_image",
]
