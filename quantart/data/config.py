"""Build datasets from the ``data.params.train/validation/test`` entries of official configs.

The official QuantArt configs name taming classes (``taming.data.custom.CustomTrain``,
``taming.data.unpaired_image.UnpairedImageTrain``, ``taming.data.paired_image.PairedImageVal``,
...) with their own parameter names; ``dataset_from_config`` maps them onto this
package's datasets. A target naming one of this package's classes
(``quantart.data.UnpairedDataset`` or just ``UnpairedDataset``) gets its params as-is.
Relative paths are taken relative to the current directory, as the official code does.
"""
from __future__ import annotations

from typing import Any, Mapping

from .datasets import ImageFolderDataset, PairedDataset, UnpairedDataset
from .errors import DataError

_OWN = {cls.__name__: cls for cls in (ImageFolderDataset, UnpairedDataset, PairedDataset)}
_OFFICIAL_VALIDATION_CAP = 1000  # the official Val/Test datasets stop at 1000 samples


def _kind(target: str) -> tuple[str, str]:
    """('custom' | 'unpaired' | 'paired' | own class name, 'Train' | 'Val' | 'Test' | '')."""
    name = target.rsplit(".", 1)[-1]
    if name in _OWN:
        return name, ""
    for prefix, kind in (("Custom", "custom"), ("UnpairedImage", "unpaired"),
                         ("PairedImage", "paired")):
        for split in ("Train", "Val", "Test"):
            if name == prefix + split:
                return kind, split
    raise DataError(f"unsupported dataset target {target!r}")


def _take(params: dict, key: str, target: str) -> Any:
    if params.get(key) is None:
        raise DataError(f"dataset {target} needs parameter {key!r}")
    return params.pop(key)


def dataset_from_config(
    spec: Mapping[str, Any], *, train: bool, seed: int = 0, size: int | None = None
):
    """A dataset for ``spec = {"target": ..., "params": {...}}``.

    ``train`` selects random crops (True) or centre crops (False); ``size`` overrides
    ``params.size`` (a ``--size`` flag).
    """
    if not isinstance(spec, Mapping) or "target" not in spec:
        raise DataError("a dataset entry needs a 'target' (and usually 'params')")
    target = str(spec["target"])
    params = dict(spec.get("params") or {})
    if size is not None:
        params["size"] = size
    kind, split = _kind(target)
    if kind in _OWN:
        params.setdefault("random_crop", train)
        params.setdefault("seed", seed)
        try:
            return _OWN[kind](**params)
        except TypeError as exc:
            raise DataError(f"bad params for {target}: {exc}") from None
    known = {"custom": {"size", "random_crop", "training_images_list_file", "test_images_list_file"},
             "unpaired": {"size", "random_crop", "folder1", "folder2", "numpy_folder1",
                          "numpy_folder2", "wikiart_info1", "wikiart_key1", "wikiart_info2",
                          "wikiart_key2"},
             "paired": {"size", "random_crop", "folder1", "folder2",
                        "training_images_list_file", "test_images_list_file"}}[kind]
    unknown = sorted(set(params) - known)
    if unknown:
        raise DataError(f"unknown parameter(s) for {target}: {', '.join(unknown)}")
    cap = _OFFICIAL_VALIDATION_CAP if split in ("Val", "Test") else None
    common = dict(size=params.pop("size", 256), random_crop=train, seed=seed, max_items=cap)
    params.pop("random_crop", None)  # the official classes ignore/override it as well
    for key in ("numpy_folder1", "numpy_folder2"):
        if params.pop(key, None) is not None:
            raise DataError(f"{target}: {key} (precomputed numpy inputs) is not supported")
    if kind == "custom":
        key = "training_images_list_file" if split == "Train" else "test_images_list_file"
        dataset = ImageFolderDataset(list_file=_take(params, key, target), **common)
    elif kind == "unpaired":
        dataset = UnpairedDataset(
            _take(params, "folder1", target), _take(params, "folder2", target),
            content_csv=params.pop("wikiart_info1", None),
            content_genre=params.pop("wikiart_key1", None),
            style_csv=params.pop("wikiart_info2", None),
            style_genre=params.pop("wikiart_key2", None), **common)
    else:
        if params.pop("training_images_list_file", None) or params.pop("test_images_list_file", None):
            raise DataError(f"{target}: pair list files are not supported; give folder1 and folder2")
        dataset = PairedDataset(_take(params, "folder1", target),
                                _take(params, "folder2", target), **common)
    return dataset
