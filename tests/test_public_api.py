"""The public surface is a contract: every name the README and the packages' ``__all__`` list is there,
and each one a user calls first is called here, so a removal (or a broken wrapper) fails CI.

* Every name in the ``__all__`` of every package of quantart, quantart_export and quantart_runtime
  resolves (``getattr``), subpackages included.
* Every dotted name the README uses (``quantart.load_model``, ``quantart.StyleTransfer.from_checkpoint``,
  ``quantart_runtime.quality``, ``from quantart_runtime import Stylizer``, ...) resolves.
* Each name of the top-level ``__all__`` (quantart, quantart_export, quantart_runtime), of
  ``quantart.models`` and of ``quantart_runtime.backends`` is called in ``test_every_public_name_is_called``
  on the tiny test models, and that test checks that it called them all (a new public name needs a call
  here). The Ray entry points (``quantart_runtime.cluster``) are called by the slow cluster tests.
* The sample styles shipped as package data are the repository's ``assets/style`` files.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
PACKAGE_DIRS = {"quantart": ROOT / "quantart", "quantart_export": ROOT / "export", "quantart_runtime": ROOT / "runtime"}
CALLED_MODULES = ("quantart", "quantart.models", "quantart_export", "quantart_runtime", "quantart_runtime.backends")


def _packages() -> list[str]:
    """Every package (a folder with __init__.py) of the three distributions, dotted."""
    out = []
    for name, folder in PACKAGE_DIRS.items():
        for init in sorted(folder.rglob("__init__.py")):
            parts = init.parent.relative_to(folder).parts
            out.append(".".join((name, *parts)))
    return out


def _all(module_name: str) -> list[str]:
    return list(getattr(importlib.import_module(module_name), "__all__", []))


def _resolve(dotted: str):
    """The object a dotted name names (importing modules as needed)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def readme_names() -> set[str]:
    """The dotted public names the README's text and Python examples use."""
    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"\b(quantart(?:_runtime|_export)?(?:\.[A-Za-z_]\w*)+)", text))
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGE_DIRS:
                names.update(f"{node.module}.{a.name}" for a in node.names)
    # a trailing attribute of a file name in prose (quantart.checkpoint.py) is not a name
    return {n[:-3] if n.endswith(".py") else n for n in names}


@pytest.mark.parametrize("package", [pytest.param(p, marks=pytest.mark.slow) if p == "quantart_runtime.cluster" else p
                                     for p in _packages()])   # cluster's names import Ray (seconds): slow lane
def test_every_name_in_all_resolves(package):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", []):
        assert getattr(module, name, None) is not None, f"{package}.{name} is in __all__ but not there"


def test_every_name_the_readme_uses_resolves():
    names = readme_names()
    assert {"quantart.load_model", "quantart.StyleTransfer.from_checkpoint", "quantart_runtime.Stylizer"} <= names
    for dotted in sorted(names):
        _resolve(dotted)


def test_every_public_name_is_called(model_dir, tmp_path):
    import torch

    import quantart
    import quantart.models as qm
    import quantart_export
    import quantart_runtime as qr
    import quantart_runtime.backends as qb

    called: set[str] = set()

    def call(module: str, name: str, *args, **kwargs):
        called.add(f"{module}.{name}")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    # quantart: the two models (built, and loaded by from_checkpoint), load_model / save_model, the error
    stage2 = call("quantart", "load_model", DATA / "tiny_stage2.ckpt")
    assert isinstance(stage2, quantart.StyleTransfer) and not stage2.training
    stage1 = quantart.BaseVQGAN.from_checkpoint(DATA / "tiny_stage1.ckpt")
    assert isinstance(stage1, quantart.BaseVQGAN) and stage1.config_source in ("stored", "inferred")
    saved = call("quantart", "save_model", stage2, tmp_path / "saved")
    again = quantart.StyleTransfer.from_checkpoint(saved)
    assert again.config_source == "stored" and again.config == stage2.config
    for k, v in stage2.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    cfg = {k: v for k, v in stage1.config.items() if k != "kind"}
    assert call("quantart", "BaseVQGAN", **cfg).config == stage1.config
    cfg2 = {k: v for k, v in stage2.config.items() if k != "kind"}
    assert call("quantart", "StyleTransfer", **cfg2).config == stage2.config
    with pytest.raises(quantart.CheckpointError, match="holds a StyleTransfer .* not a BaseVQGAN"):
        quantart.BaseVQGAN.from_checkpoint(saved)
    with pytest.raises(quantart.CheckpointError, match="not a StyleTransfer"):
        quantart.StyleTransfer.from_checkpoint(DATA / "tiny_stage1.ckpt")
    assert isinstance(call("quantart", "CheckpointError", "x"), ValueError)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", quantart.__version__)
    called.add("quantart.__version__")

    # quantart.models: the config layer
    official = call("quantart.models", "official_config", "stage2")
    assert call("quantart.models", "check_config", official, "official")["kind"] == "stage2"
    assert type(call("quantart.models", "build_model", stage1.config)) is qm.MODEL_CLASSES["stage1"]
    called.add("quantart.models.MODEL_CLASSES")
    assert set(qm.MODEL_CLASSES) == {"stage1", "stage2"}
    with pytest.raises(qm.ArchitectureError):
        call("quantart.models", "check_config", {"kind": "stage3"}, "x")
    called.add("quantart.models.ArchitectureError")
    assert call("quantart.models", "BaseVQGAN", **cfg).config == stage1.config
    assert call("quantart.models", "StyleTransfer", **cfg2).config == stage2.config

    # quantart_export: export_model (model_dir is its result, exported once per session), the errors,
    # nearest_code
    called.add("quantart_export.export_model")
    assert (model_dir / "manifest.json").is_file()
    with pytest.raises(quantart_export.ExportError, match="multiple of the latent stride"):
        call("quantart_export", "export_model", DATA / "tiny_stage2.ckpt", tmp_path / "bad", verify_res=[(33, 33)])
    assert not (tmp_path / "bad").exists()
    called.add("quantart_export.ExportError")
    failed = call("quantart_export", "VerificationError", "x", [])
    assert isinstance(failed, Exception) and failed.checks == []
    z, codebook = torch.randn(1, 4, 2, 3), torch.randn(8, 4)
    quantized, indices = call("quantart_export", "nearest_code", z, codebook)
    assert indices.shape == (1, 2, 3) and torch.equal(quantized, codebook[indices].permute(0, 3, 1, 2))

    # quantart_runtime: Stylizer, StyleCode, images, manifest, the errors
    manifest = call("quantart_runtime", "load_manifest", model_dir)
    assert manifest["kind"] == "stage2"
    content = (np.arange(24 * 36 * 3) % 251).astype(np.uint8).reshape(24, 36, 3)
    call("quantart_runtime", "save_image", content, tmp_path / "c.png")
    image = call("quantart_runtime", "load_image", tmp_path / "c.png")
    assert np.array_equal(image, content)
    with qr.Stylizer.load(model_dir, backend="onnxruntime") as st:
        called.add("quantart_runtime.Stylizer")
        code = st.encode_style(image[:16, :16], size=None)
        assert isinstance(code, qr.StyleCode) and code.size == (16, 16)
        again_code = call("quantart_runtime", "StyleCode", code.latent, code.indices, code.size)
        assert st.stylize(image, again_code).shape == image.shape
    with pytest.raises(qr.ModelError, match="manifest"):
        qr.Stylizer.load(tmp_path)
    with pytest.raises(qr.BackendError, match="unknown backend"):
        qr.Stylizer.load(model_dir, backend="mxnet")
    with pytest.raises(qr.ImageError):
        qr.load_image(b"not an image")
    called.update({"quantart_runtime.ModelError", "quantart_runtime.BackendError", "quantart_runtime.ImageError"})
    assert qr.__version__
    called.add("quantart_runtime.__version__")

    # quantart_runtime.backends: the seam
    assert call("quantart_runtime.backends", "available_backends")["onnxruntime"] == ""
    cls = call("quantart_runtime.backends", "get_runner_class", "onnxruntime")
    assert issubclass(cls, qb.Runner) and call("quantart_runtime.backends", "select_backend", "onnxruntime") is cls
    called.update({"quantart_runtime.backends.Runner", "quantart_runtime.backends.BACKENDS",
                   "quantart_runtime.backends.AUTO_ORDER"})
    assert set(qb.AUTO_ORDER) <= set(qb.BACKENDS)
    choice = call("quantart_runtime.backends", "choose_backend", model_dir, backend="onnxruntime")
    assert isinstance(choice, qb.Choice) and choice.backend == "onnxruntime"
    assert call("quantart_runtime.backends", "Choice", "onnxruntime", "fp32", "fp32").reason == ""
    candidates, reasons = call("quantart_runtime.backends", "cpu_candidates", model_dir, {"capabilities": ["FP32"]})
    assert [c.backend for c in candidates] == ["onnxruntime"] and "reports no BF16" in reasons[0]

    expected = {f"{m}.{n}" for m in CALLED_MODULES for n in _all(m)}
    assert expected - called == set(), "public names not called by this test"


def test_readme_top_level_names_are_called():
    """Every name the README uses at the top of the three packages is one that the test above calls."""
    expected = {f"{m}.{n}" for m in CALLED_MODULES for n in _all(m)}
    top = {".".join(n.split(".")[:2]) for n in readme_names()}
    modules = {n for n in top if isinstance(_resolve(n), type(importlib))}
    assert top - modules <= expected | {"quantart.StyleTransfer", "quantart.BaseVQGAN"}


def test_the_shipped_sample_styles_are_the_repository_samples():
    from quantart_runtime.cluster.web import SAMPLE_STYLES

    shipped = sorted(p.name for p in SAMPLE_STYLES.glob("*.jpg"))
    assert shipped == sorted(p.name for p in (ROOT / "assets" / "style").glob("*.jpg")) and len(shipped) == 4
    for name in shipped:
        assert (SAMPLE_STYLES / name).read_bytes() == (ROOT / "assets" / "style" / name).read_bytes(), name
    assert "Siyu Huang" in (SAMPLE_STYLES / "ATTRIBUTION.md").read_text()
