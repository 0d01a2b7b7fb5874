"""Tests of quantart.data: formats, faults, crops, pairing, DataLoader workers."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from quantart.data import (
    DataError,
    DataWarning,
    ImageFolderDataset,
    PairedDataset,
    UnpairedDataset,
    dataset_from_config,
    find_images,
    load_rgb,
    load_tensor,
    scan_images,
    to_rgb,
)

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def solid(path: Path, color=(200, 30, 60), size=(48, 40), mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def noise_jpeg(path: Path, size=(64, 64), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path


def truncated_jpeg(path: Path) -> Path:
    noise_jpeg(path, seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def rgb_at(image: Image.Image, xy) -> tuple[int, int, int]:
    return tuple(int(v) for v in image.getpixel(xy))


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "mode, color, expected",
    [
        ("L", 100, (100, 100, 100)),
        ("LA", (100, 0), (255, 255, 255)),  # fully transparent -> white
        ("LA", (100, 255), (100, 100, 100)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),
        ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),  # half alpha over white
        ("1", 1, (255, 255, 255)),
    ],
)
def test_png_modes_convert_to_rgb(tmp_path, mode, color, expected):
    path = solid(tmp_path / f"{mode}.png", color, mode=mode)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (48, 40)
    got = rgb_at(image, (5, 5))
    assert all(abs(a - b) <= 1 for a, b in zip(got, expected)), got


def test_palette_with_and_without_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert rgb_at(load_rgb(tmp_path / "p.png"), (0, 0)) == (10, 200, 30)
    palette.save(tmp_path / "pt.png", transparency=1)  # palette index 1 transparent
    assert rgb_at(load_rgb(tmp_path / "pt.png"), (0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = solid(tmp_path / "cmyk.jpg", (0, 255, 255, 0), mode="CMYK", quality=100)
    assert Image.open(path).mode == "CMYK"
    r, g, b = rgb_at(load_rgb(path), (10, 10))
    assert r > 220 and g < 40 and b < 40  # cyan 0, magenta+yellow full -> red


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 65535], [32896, 257 * 40]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    image = load_rgb(tmp_path / "deep.png")
    assert [rgb_at(image, xy)[0] for xy in [(0, 0), (1, 0), (0, 1), (1, 1)]] == [0, 255, 128, 40]
    # 32-bit integer grey ("I") holding 16-bit data
    as_i = Image.fromarray(values.astype(np.int32))
    assert as_i.mode == "I"
    assert rgb_at(to_rgb(as_i), (0, 1)) == (128, 128, 128)


def test_exif_orientation_is_applied(tmp_path):
    raw = Image.new("RGB", (64, 32), (0, 0, 255))
    raw.paste((255, 0, 0), (0, 0, 32, 32))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display needs a 90 degree clockwise rotation
    raw.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    assert Image.open(tmp_path / "rot.jpg").size == (64, 32)
    upright = load_rgb(tmp_path / "rot.jpg")
    assert upright.size == (32, 64)
    top, bottom = rgb_at(upright, (16, 8)), rgb_at(upright, (16, 56))
    assert top[0] > 200 and top[2] < 50, top  # the left edge went to the top: red
    assert bottom[2] > 200 and bottom[0] < 50, bottom


def test_tensor_shape_dtype_and_value_range(tmp_path):
    black = load_tensor(solid(tmp_path / "k.png", (0, 0, 0)), 32)
    white = load_tensor(solid(tmp_path / "w.png", (255, 255, 255)), 32)
    assert black.shape == (3, 32, 32) and black.dtype == torch.float32
    assert torch.all(black == -1) and torch.all(white == 1)
    photo = ImageFolderDataset(ASSETS / "content", 64)[0]["image"]
    assert photo.min() >= -1 and photo.max() <= 1 and photo.std() > 0.1


# ---------------------------------------------------------------- crops and resizing


def gradient_png(path: Path, width=96, height=48) -> Path:
    xs = np.linspace(0, 255, width).round().astype(np.uint8)
    pixels = np.stack([np.tile(xs, (height, 1))] * 3, axis=-1)
    Image.fromarray(pixels).save(path)
    return path


def test_center_crop_is_the_middle_and_random_crop_varies(tmp_path):
    gradient_png(tmp_path / "g.png")  # 96 x 48 -> resized to 64 x 32, cropped to 32
    center = ImageFolderDataset(tmp_path, 32, random_crop=False)
    assert center[0]["image"].shape == (3, 32, 32)
    expected = Image.open(tmp_path / "g.png").resize((64, 32), Image.Resampling.BICUBIC)
    expected = np.asarray(expected.crop((16, 0, 48, 32)), dtype=np.float32) / 127.5 - 1
    assert np.allclose(center[0]["image"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert torch.equal(center[0]["image"], center[0]["image"])

    rand = ImageFolderDataset(tmp_path, 32, random_crop=True, seed=3)
    lefts = set()
    for epoch in range(12):
        rand.set_epoch(epoch)
        lefts.add(round(float(rand[0]["image"][0, 0, 0]), 4))  # gradient value = x offset
    assert len(lefts) > 4
    rand.set_epoch(5)
    again = ImageFolderDataset(tmp_path, 32, random_crop=True, seed=3)
    again.set_epoch(5)
    assert torch.equal(rand[0]["image"], again[0]["image"])


def test_large_jpeg_draft_decoding_matches_full_decoding(tmp_path):
    xs = np.linspace(0, 255, 640)
    pixels = np.stack([np.tile(xs, (320, 1)), np.tile(xs[::-1], (320, 1)),
                       np.full((320, 640), 90.0)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    fast = load_tensor(tmp_path / "big.jpg", 64)
    full = to_tensor_reference(tmp_path / "big.jpg", 64)
    assert fast.shape == (3, 64, 64) and (fast - full).abs().mean() < 0.02


def to_tensor_reference(path, size):
    from quantart.data import resize_and_crop, to_tensor
    return to_tensor(resize_and_crop(load_rgb(path), size))


def test_small_images_are_upscaled_to_size(tmp_path):
    solid(tmp_path / "tiny.png", (10, 20, 30), size=(7, 5))
    assert ImageFolderDataset(tmp_path, 40)[0]["image"].shape == (3, 40, 40)


# ------------------------------------------------------------------- finding files


def test_recursive_search_extensions_and_hidden_files(tmp_path):
    for name in ["a.jpg", "B.JPG", "sub/c.jpeg", "sub/deep/d.PNG", "e.webp", "f.bmp", "g.Jpeg"]:
        solid(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "h.gif").write_bytes(b"GIF89a")
    solid(tmp_path / ".hidden" / "x.jpg")
    solid(tmp_path / "._resource.jpg")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["B.JPG", "a.jpg", "e.webp", "f.bmp", "g.Jpeg", "sub/c.jpeg", "sub/deep/d.PNG"]
    dataset = ImageFolderDataset(tmp_path, 16)
    assert len(dataset) == 7
    assert {Path(dataset[i]["path"]).suffix for i in range(7)} == {
        ".JPG", ".jpg", ".webp", ".bmp", ".Jpeg", ".jpeg", ".PNG"}


def test_empty_missing_and_non_image_folders_fail_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty") as err:
        ImageFolderDataset(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist.*nowhere"):
        UnpairedDataset(tmp_path / "nowhere", ASSETS / "style")
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    (other / "b.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match=r"no images .* 2 files: .*other"):
        UnpairedDataset(ASSETS / "content", other)
    solid(tmp_path / "file.png")
    with pytest.raises(DataError, match="not a directory"):
        ImageFolderDataset(tmp_path / "file.png")
    assert issubclass(DataError, ValueError)


def test_csv_filter(tmp_path):
    for name in ["a.jpg", "b.jpg", "c.jpg", "nested/d.jpg"]:
        solid(tmp_path / "art" / name)
    table = tmp_path / "train_info.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "artist", "genre"])
        writer.writerows([["a.jpg", "x", "landscape"], ["b.jpg", "y", "portrait"],
                          ["nested/d.jpg", "z", "landscape"], ["gone.jpg", "z", "landscape"]])
    with pytest.warns(DataWarning, match="1 files listed .* missing.*gone.jpg"):
        dataset = ImageFolderDataset(tmp_path / "art", 16, csv_file=table, genre="landscape")
    assert [Path(p).name for p in map(str, dataset.paths)] == ["a.jpg", "d.jpg"]
    with pytest.warns(DataWarning, match="missing"):
        both = ImageFolderDataset(tmp_path / "art", 16, csv_file=table,
                                  genre=["portrait", "landscape"])
    assert len(both) == 3
    with pytest.raises(DataError, match="genre.*still_life.*genres include: landscape, portrait"):
        ImageFolderDataset(tmp_path / "art", csv_file=table, genre="still_life")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,genre\na.jpg,landscape\n")
    with pytest.raises(DataError, match="lacks column.*filename"):
        ImageFolderDataset(tmp_path / "art", csv_file=bad, genre="landscape")
    unpaired = UnpairedDataset(ASSETS / "content", tmp_path / "art", 16,
                               style_csv=table, style_genre="portrait")
    assert all(unpaired[i]["style_path"].endswith("b.jpg") for i in range(len(unpaired)))


def test_list_file(tmp_path):
    solid(tmp_path / "imgs" / "1.png")
    solid(tmp_path / "imgs" / "2.png")
    listing = tmp_path / "train.txt"
    listing.write_text(f"{tmp_path / 'imgs' / '2.png'}\n\nimgs/1.png\n")
    dataset = ImageFolderDataset(tmp_path, 16, list_file=listing)
    assert sorted(Path(p).name for p in map(str, dataset.paths)) == ["1.png", "2.png"]


# ------------------------------------------------------------------------- faults


def test_unreadable_files_are_skipped_at_scan_with_count_and_paths(tmp_path):
    solid(tmp_path / "good1.png")
    solid(tmp_path / "good2.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a jpeg")
    png = solid(tmp_path / "brokenpng.png").read_bytes()
    (tmp_path / "brokenpng.png").write_bytes(png[:-20])  # damaged IEND / CRC
    with pytest.warns(DataWarning, match=r"skipped 3 unreadable .*brokenpng.png.*text.jpg.*zero.jpg"):
        dataset = ImageFolderDataset(tmp_path, 16)
    assert len(dataset) == 2
    assert sorted(p.name for p in dataset.skipped) == ["brokenpng.png", "text.jpg", "zero.jpg"]
    for i in range(len(dataset)):
        assert dataset[i]["image"].shape == (3, 16, 16)


def test_folder_with_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.png").write_text("nope")
    with pytest.raises(DataError, match=f"no readable images in .*{tmp_path.name}"):
        ImageFolderDataset(tmp_path)


def test_truncated_jpeg_is_replaced_counted_and_reported(tmp_path):
    noise_jpeg(tmp_path / "a.jpg", seed=1)
    truncated_jpeg(tmp_path / "b.jpg")
    noise_jpeg(tmp_path / "c.jpg", seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the cheap scan cannot see truncation: no warning
        dataset = ImageFolderDataset(tmp_path, 32, random_crop=False)
    assert len(dataset) == 3 and dataset.failures == 0
    with pytest.warns(DataWarning, match=r"1 images failed to load .*b\.jpg"):
        sample = dataset[1]
    assert sample["path"].endswith("c.jpg")  # deterministic substitute: the next file
    assert torch.equal(sample["image"], dataset[2]["image"])
    assert dataset.failures == 1 and [p.name for p in dataset.failed_paths] == ["b.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known bad: skipped without new warnings
        assert dataset[1]["path"].endswith("c.jpg")
    assert dataset.failures == 1


def test_truncated_last_file_wraps_around(tmp_path):
    noise_jpeg(tmp_path / "a.jpg")
    truncated_jpeg(tmp_path / "z.jpg")
    dataset = ImageFolderDataset(tmp_path, 16)
    with pytest.warns(DataWarning):
        assert dataset[1]["path"].endswith("a.jpg")


def test_scan_images_reports_reasons(tmp_path):
    good = solid(tmp_path / "g.png")
    empty = tmp_path / "e.png"
    empty.write_bytes(b"")
    with pytest.warns(DataWarning, match="skipped 1"):
        result = scan_images([good, empty], where="here")
    assert result.good == [good] and result.bad == [(empty, "empty file")]


# ------------------------------------------------------------------ unpaired / paired


def make_folder(root: Path, count: int, prefix: str) -> Path:
    for i in range(count):
        solid(root / f"{prefix}{i:02d}.png", (i * 20 % 256, 50, 90), size=(20, 20))
    return root


def test_unpaired_pairs_change_each_epoch_and_are_reproducible(tmp_path):
    content = make_folder(tmp_path / "c", 8, "c")
    style = make_folder(tmp_path / "s", 8, "s")
    dataset = UnpairedDataset(content, style, 16, seed=1)
    assert len(dataset) == 8
    epochs = [dataset.style_indices(e).tolist() for e in range(4)]
    for pairing in epochs:
        assert sorted(pairing) == list(range(8))  # every style used once per epoch
    assert len({tuple(p) for p in epochs}) == 4  # re-drawn every epoch
    same = UnpairedDataset(content, style, 16, seed=1)
    assert [same.style_indices(e).tolist() for e in range(4)] == epochs
    other = UnpairedDataset(content, style, 16, seed=2)
    assert other.style_indices(0).tolist() != epochs[0]
    dataset.set_epoch(2)
    sample = dataset[3]
    assert set(sample) == {"content", "style", "content_path", "style_path"}
    assert sample["content_path"].endswith("c03.png")
    assert sample["style_path"].endswith(f"s{epochs[2][3]:02d}.png")


def test_unpaired_with_fewer_styles_uses_each_evenly(tmp_path):
    dataset = UnpairedDataset(make_folder(tmp_path / "c", 7, "c"),
                              make_folder(tmp_path / "s", 2, "s"), 16)
    counts = np.bincount(dataset.style_indices(0), minlength=2)
    assert len(dataset) == 7 and sorted(counts.tolist()) == [3, 4]


def test_unpaired_replaces_broken_style(tmp_path):
    content = make_folder(tmp_path / "c", 3, "c")
    style = tmp_path / "s"
    truncated_jpeg(style / "bad.jpg")
    noise_jpeg(style / "good.jpg")
    dataset = UnpairedDataset(content, style, 16)
    with pytest.warns(DataWarning, match="style folder"):
        paths = {dataset[i]["style_path"] for i in range(3)}
    assert paths == {str((style / "good.jpg").resolve())} and dataset.failures == 1


def test_paired_matches_names_and_crops_alike(tmp_path):
    for name in ["x", "y", "sub/z"]:
        for side in ("c", "s"):
            path = tmp_path / side / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            gradient_png(path)
    solid(tmp_path / "c" / "only_content.png")
    dataset = PairedDataset(tmp_path / "c", tmp_path / "s", 24, random_crop=True, seed=5)
    assert len(dataset) == 3
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for i in range(3):
            sample = dataset[i]
            assert Path(sample["content_path"]).stem == Path(sample["style_path"]).stem
            assert torch.equal(sample["content"], sample["style"])  # same crop box
    truncated_jpeg(tmp_path / "c" / "w.jpg")
    gradient_png(tmp_path / "s" / "w.png")
    broken = PairedDataset(tmp_path / "c", tmp_path / "s", 24, random_crop=False)
    names = [p.name for p in broken.content.paths]
    assert names == ["z.png", "w.jpg", "x.png", "y.png"]  # sorted by relative name
    with pytest.warns(DataWarning, match="w.jpg"):
        assert Path(broken[1]["content_path"]).name == "x.png"
    assert broken.failures == 1
    (tmp_path / "none").mkdir()
    solid(tmp_path / "none" / "q.png")
    with pytest.raises(DataError, match="no file names in common"):
        PairedDataset(tmp_path / "c", tmp_path / "none")


# ---------------------------------------------------------------- DataLoader workers


def collect(dataset, workers: int, epochs: int):
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers,
                        persistent_workers=workers > 0)
    out = []
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        batches = list(loader)
        out.append(([p for b in batches for p in b["style_path"]],
                    torch.cat([b["content"] for b in batches])))
    return out


def test_dataloader_with_two_workers_matches_single_process(tmp_path):
    content = make_folder(tmp_path / "c", 6, "c")
    truncated_jpeg(content / "c99.jpg")  # last content file fails at load time
    style = make_folder(tmp_path / "s", 6, "s")
    dataset = UnpairedDataset(content, style, 16, random_crop=True, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        parallel = collect(dataset, workers=2, epochs=2)
    assert dataset.failures == 1  # counted inside a worker, visible here
    assert [p.name for p in dataset.failed_paths] == ["c99.jpg"]
    reference = UnpairedDataset(content, style, 16, random_crop=True, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        serial = collect(reference, workers=0, epochs=2)
    for (p_paths, p_content), (s_paths, s_content) in zip(parallel, serial):
        assert p_paths == s_paths and torch.equal(p_content, s_content)
    assert parallel[0][0] != parallel[1][0]  # persistent workers saw the new epoch
    assert parallel[0][1].shape == (7, 3, 16, 16)


# ------------------------------------------------------------------ official configs


def test_dataset_from_official_config(tmp_path):
    table = tmp_path / "info.csv"
    table.write_text("filename,genre\n1.jpg,landscape\n2.jpg,portrait\n")
    spec = {"target": "taming.data.unpaired_image.UnpairedImageVal",
            "params": {"folder1": str(ASSETS / "content"), "folder2": str(ASSETS / "style"),
                       "wikiart_info2": str(table), "wikiart_key2": "landscape", "size": 256}}
    dataset = dataset_from_config(spec, train=False, size=32)
    assert isinstance(dataset, UnpairedDataset) and not dataset.random_crop
    assert len(dataset) == 4 and dataset.max_items == 1000
    assert dataset[0]["style"].shape == (3, 32, 32)
    assert dataset[2]["style_path"].endswith("1.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(str(ASSETS / "style" / "3.jpg") + "\n")
    stage1 = dataset_from_config({"target": "taming.data.custom.CustomTrain", "params": {
        "training_images_list_file": str(listing), "size": 16}}, train=True)
    assert len(stage1) == 1 and stage1.random_crop
    own = dataset_from_config({"target": "quantart.data.ImageFolderDataset",
                               "params": {"root": str(ASSETS / "content"), "size": 8}}, train=True)
    assert own[0]["image"].shape == (3, 8, 8)
    with pytest.raises(DataError, match="unknown parameter.*colour"):
        dataset_from_config({"target": "taming.data.custom.CustomTest",
                             "params": {"colour": 1}}, train=False)
    with pytest.raises(DataError, match="unsupported dataset target"):
        dataset_from_config({"target": "x.Nope"}, train=True)
