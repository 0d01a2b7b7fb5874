"""`quantart-export` safety (issue 14): --force never deletes the checkpoint or an input, a killed
export's temp directory is cleaned on the next run, a non-checkpoint says what it is, and an error
is exactly one stderr line (library warnings silenced)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from click.testing import CliRunner

from export_helpers import DATA


def invoke(*args):
    from quantart_export.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _check_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_force_never_deletes_the_checkpoint_or_the_config(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes((DATA / "tiny_stage2.ckpt").read_bytes())
    (tmp_path / "notes.txt").write_text("beside the checkpoint")
    _check_error(invoke(ckpt, "--out", tmp_path, "--force"), 2, "holds the input", "--force would delete it")
    assert ckpt.is_file() and (tmp_path / "notes.txt").is_file()

    sub = tmp_path / "configs"
    sub.mkdir()
    config = sub / "c.yaml"
    config.write_text("model: {}\n")
    _check_error(invoke(ckpt, "--out", sub, "--config", config, "--force"), 2, "holds the input")
    assert config.is_file()


def test_a_text_file_is_named_as_such_in_one_line(tmp_path):
    text = tmp_path / "readme.ckpt"
    text.write_text("hello world\n")
    _check_error(invoke(text, "--out", tmp_path / "out"), 2, "text file")
    pickle = tmp_path / "p.ckpt"
    pickle.write_bytes(b"\x80\x04garbage")          # torch.load warns about the protocol: silenced
    _check_error(invoke(pickle, "--out", tmp_path / "out"), 2, "quantart-export: error: ")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_exports_temp_directory_is_cleaned_on_the_next_run(tmp_path):
    from quantart_export.pipeline import OWNER_FILE

    out = tmp_path / "model"
    dead = tmp_path / ".model.abc123.tmp"                    # a SIGKILLed run's leftovers
    dead.mkdir()
    (dead / OWNER_FILE).write_text(str(_dead_pid()))
    (dead / "sga.onnx").write_bytes(b"\0" * 1000)
    orphan = tmp_path / ".model.def456.old"                  # no owner file, old
    orphan.mkdir()
    past = time.time() - 3600
    os.utime(orphan, (past, past))
    text = tmp_path / "bad.ckpt"
    text.write_text("not a checkpoint")
    invoke(text, "--out", out)                               # any next run to the same --out
    assert not dead.exists() and not orphan.exists()

    live = tmp_path / ".model.789.tmp"                       # another export still running: kept
    live.mkdir()
    (live / OWNER_FILE).write_text(str(os.getpid()))
    invoke(text, "--out", out)
    assert live.exists()
