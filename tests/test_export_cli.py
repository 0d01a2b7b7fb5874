"""`quantart-export` CLI: errors (exit 2, one line on stderr, nothing written), --force, and a failed
verification (exit 1, nothing written, an existing DIR left as it was)."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from export_helpers import DATA, manifest

FAST = ["--precision", "fp32", "--verify-res", "32x32"]  # fp32 and one verification size: the quick path


def invoke(*args):
    from quantart_export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, code: int, *needles: str, after_progress: bool = False) -> None:
    """Exit `code` and one error line on stderr (after the progress lines of a real export)."""
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    if after_progress:
        assert all(line.startswith(("exported ", "verified ")) for line in lines[:-1]), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("quantart-export: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_checkpoint(tmp_path):
    result = invoke(tmp_path / "nope.ckpt", "--out", tmp_path / "out")
    one_line_error(result, 2, "nope.ckpt", "no such checkpoint")
    assert list(tmp_path.iterdir()) == []


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint at all" * 10)
    one_line_error(invoke(bad, "--out", tmp_path / "out"), 2, "bad.ckpt", "not a readable checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt"]


def test_unsupported_architecture(tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save({"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}, ckpt)
    one_line_error(invoke(ckpt, "--out", tmp_path / "out"), 2, "unsupported architecture")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output's parent should be")
    one_line_error(invoke(DATA / "tiny_stage1.ckpt", "--out", blocker / "model"), 2, "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("args,needle", [
    (["--min-res", "30"], "multiple of the latent stride"),
    (["--opset", "11"], "--opset 11"),
    (["--verify-res", "30x32"], "30x32"),
    (["--verify-res", "big"], "HxW"),
    (["--threshold", "psnr=3"], "unknown verification threshold"),
    (["--precision", "int8"], "int8"),
])
def test_bad_options(tmp_path, args, needle):
    one_line_error(invoke(DATA / "tiny_stage1.ckpt", "--out", tmp_path / "out", *args), 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_existing_dir_needs_force_and_failed_verification_writes_nothing(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    one_line_error(invoke(DATA / "tiny_stage1.ckpt", "--out", out, *FAST), 2, "already exists", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    # a real export whose verification cannot pass (PSNR ≥ 1000 dB demanded): exit 1, old DIR kept
    result = invoke(DATA / "tiny_stage1.ckpt", "--out", out, "--force", "--threshold", "fp32_psnr_db=1000", *FAST)
    one_line_error(result, 1, "verification failed", "nothing written", after_progress=True)
    assert "FAIL" in result.stdout and "image PSNR dB" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left


def test_force_replaces_an_existing_dir_with_the_verified_export(tiny_stage1_cli_export):
    """The session's Stage 1 export (conftest.py) ran through this CLI over an existing directory."""
    result, out = tiny_stage1_cli_export.result, tiny_stage1_cli_export.out
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "image PSNR dB" in result.stdout and "FAIL" not in result.stdout  # the verification table
    assert all(line.startswith(("exported ", "verified ", "wrote ")) for line in result.stderr.strip().splitlines())
    assert sorted(p.name for p in out.iterdir()) == [  # keep.txt is gone: the directory was replaced whole
        "decoder.fp16.onnx", "decoder.fp16.ort.onnx", "decoder.onnx", "decoder.ort.onnx", "encoder.fp16.onnx",
        "encoder.fp16.ort.onnx", "encoder.onnx", "encoder.ort.onnx", "manifest.json"]
    m = manifest(out)
    assert m["kind"] == "stage1" and m["verification"]["passed"] and m["options"]["precision"] == "both"
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary directory left


def test_default_output_beside_checkpoint(tmp_path):
    from quantart_export.pipeline import default_out_dir

    assert default_out_dir(tmp_path / "landscape2art.ckpt") == tmp_path.resolve() / "landscape2art_onnx"
