"""quantart_export on the golden tiny Stage 1 (VQGAN) checkpoint: encoder + decoder, fp32 and fp16.

The export is the session fixture ``tiny_stage1_export`` (conftest.py)."""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
import torch

from export_helpers import DATA, manifest, run, session
from quantart_runtime.util import psnr_unit


@pytest.fixture(scope="module")
def model():
    import quantart

    return quantart.load_model(DATA / "tiny_stage1.ckpt")


@pytest.fixture(scope="module")
def exported(tiny_stage1_export):
    return tiny_stage1_export


def test_stage1_directory_and_manifest(exported):
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        ["manifest.json", "encoder.onnx", "decoder.onnx", "encoder.fp16.onnx", "decoder.fp16.onnx",
         "encoder.ort.onnx", "decoder.ort.onnx", "encoder.fp16.ort.onnx", "decoder.fp16.ort.onnx"])
    m = manifest(exported)
    assert m["kind"] == "stage1" and m["latent_stride"] == 4 and m["n_embed"] == 128
    assert m["profile"] == {"min_res": 4, "opt_res": 64, "max_res": 512, "max_batch": 8}  # as the fixture asked
    assert m["verification"]["passed"] is True and m["verification"]["resolutions"] == ["32x32", "32x48"]
    enc = m["graphs"]["fp16"]["encoder"]
    assert enc["outputs"] == [
        {"name": "latent", "dtype": "float32", "shape": ["batch", 64, "latent_height", "latent_width"]},
        {"name": "indices", "dtype": "int64", "shape": ["batch", "latent_height", "latent_width"]}]
    for precision in ("fp32", "fp16"):
        for entry in m["graphs"][precision].values():
            data = (exported / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    assert m["source"]["sha256"] == hashlib.sha256((DATA / "tiny_stage1.ckpt").read_bytes()).hexdigest()


@pytest.mark.parametrize("batch,height,width", [(1, 32, 48), (3, 48, 32)])
def test_stage1_graphs_match_pytorch(exported, model, batch, height, width):
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    with torch.no_grad():
        quant, _, info = model.encode(x)
        image = model.decode(quant).numpy()
    for suffix, min_agree, min_psnr in ((".onnx", 0.99, 60), (".fp16.onnx", 0.95, 30)):
        latent, idx = run(session(exported / f"encoder{suffix}"), image=x)
        assert latent.shape == tuple(quant.shape) and idx.shape == (batch, height // 4, width // 4)
        assert (idx == info[2].numpy()).mean() >= min_agree
        (img,) = run(session(exported / f"decoder{suffix}"), latent=quant)
        assert img.shape == (batch, 3, height, width) and psnr_unit(img, image) > min_psnr


def test_stage1_golden_reconstruction(exported):
    """The ONNX encoder + decoder reproduce the official code's golden reconstruction."""
    gold = np.load(DATA / "tiny_stage1.npz")
    latent, idx = run(session(exported / "encoder.onnx"), image=gold["input"])
    assert (idx == gold["indices"]).mean() >= 0.999
    np.testing.assert_allclose(latent, gold["quant"], atol=1e-3)
    (out,) = run(session(exported / "decoder.onnx"), latent=latent)
    assert psnr_unit(out, gold["output"]) >= 45
