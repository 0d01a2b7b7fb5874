"""The full-size official architecture (random weights) exports and passes verification (FP32).

Kept small: verification at 64x64 and 64x96 (latents 4x4 and 4x6) on the sample images.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from export_helpers import manifest, run, session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from quantart.models import build_model
    from quantart.models.config import official_config

    threads = torch.get_num_threads()
    torch.set_num_threads(2)   # the full-size convolutions use both cores (conftest sets 1 for tiny models)
    torch.manual_seed(0)
    model = build_model(official_config("stage2")).eval()
    # Codebooks at a trained model's scale: the VQGAN init (uniform ±1/1024) makes every code a near tie
    # for the argmin, so 1e-7 rounding differences would decide tokens (one flip in 64 tokens fails 99.9 %).
    with torch.no_grad():
        for quantizer in (model.quantize_enc, model.quantize_dec):
            quantizer.embedding.weight.normal_()
    root = tmp_path_factory.mktemp("full")
    ckpt = root / "landscape2art.pt"
    torch.save(model.state_dict(), ckpt)
    from quantart_export import export_model

    out = export_model(ckpt, precision="fp32", verify_res=[(64, 64), (64, 96)])
    yield model, ckpt, out
    torch.set_num_threads(threads)


def test_full_size_exports_and_verifies(full):
    model, ckpt, out = full
    assert out == ckpt.parent / "landscape2art_onnx"
    m = manifest(out)
    assert (m["kind"], m["latent_stride"], m["embed_dim"], m["n_embed"]) == ("stage2", 16, 256, 1024)
    assert m["resolution_rule"] == {"multiple_of": 16, "min": 16}
    assert m["verification"]["passed"] and m["verification"]["resolutions"] == ["64x64", "64x96"]
    assert m["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert sorted(m["graphs"]) == ["fp32"]
    for entry in m["graphs"]["fp32"].values():
        assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()


def test_full_size_sga_with_own_style_size(full):
    model, _, out = full
    g = torch.Generator().manual_seed(3)
    h_x = torch.randn(1, 256, 3, 5, generator=g)
    with torch.no_grad():
        quant_ref, _, _ = model.quantize_dec(torch.randn(1, 256, 4, 2, generator=g))
        _, quant_y, _, idx = model.stylize_latent(h_x, quant_ref)
    yl, yi = run(session(out / "sga.onnx"), content_latent=h_x, style_latent=quant_ref,
                 content_ratio=np.ones(1, np.float32), output_ratio=np.ones(1, np.float32))
    assert yi.shape == (1, 3, 5) and (yi == idx.numpy()).mean() >= 0.9
