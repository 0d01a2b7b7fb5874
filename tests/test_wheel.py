"""The wheel holds what its commands need (slow lane: it builds the wheel and installs it with its
dependencies into a fresh venv, then starts a Ray Serve service).

``pip wheel`` builds the wheel from a copy of the package sources (the checkout stays untouched); a fresh
venv gets it with the ``[cpu,serve]`` extras, as the README's deployment install (no torch; pip's cache
and ``$PIP_FIND_LINKS`` as the Makefile); ``pip check`` passes; outside any checkout, ``quantart serve
--sample-styles`` (no folder) lists the four sample styles shipped as package data on ``GET /v1/styles``,
and ``quantart demo`` says in one line what it needs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from cluster_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "quantart", "export", "runtime", "benchmarks")
pytestmark = pytest.mark.slow
SAMPLES = ("1.jpg", "2.jpg", "3.jpg", "4.jpg", "ATTRIBUTION.md")


def _run(cmd, cwd, timeout=900, env=None):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the package sources."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
          src], cwd=tmp)
    (found,) = (tmp / "dist").glob("quantart-*.whl")
    return found


def test_the_wheel_holds_the_sample_styles_and_the_page(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SAMPLES:
        assert f"quantart_runtime/cluster/web/sample_styles/{name}" in names, name
    assert {"quantart_runtime/cluster/web/index.html", "quantart/weights/lpips_vgg_lin.pth"} <= names


def test_fresh_install_serves_the_sample_styles(wheel, model_dir, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    py, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([py, "-m", "pip", "install", "-q", f"{wheel}[cpu,serve]"], cwd=tmp_path, timeout=1800)
    _run([py, "-m", "pip", "check"], cwd=tmp_path)
    probe = _run([py, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"], cwd=tmp_path)
    assert probe.stdout.strip() == "True"          # the deployment install has no torch

    demo = subprocess.run([bin_dir / "quantart", "demo"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert demo.returncode != 0 and len(demo.stderr.strip().splitlines()) == 1, demo.stderr
    assert "checkout" in demo.stderr and "train,export" in demo.stderr

    port = free_port()
    env = {**os.environ, "QUANTART_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    service = subprocess.Popen([bin_dir / "quantart", "serve", "--model", model_dir, "--port", str(port),
                                "--backend", "onnxruntime", "--sample-styles"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        listing, deadline = None, time.monotonic() + 300
        while listing is None and time.monotonic() < deadline and service.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/styles", timeout=10) as r:
                    listing = json.loads(r.read())
            except OSError:
                time.sleep(2)
        assert listing is not None, f"no GET /v1/styles (exit {service.poll()})"
        names = sorted(s["name"] for s in listing["styles"])
        assert names == ["sample 1", "sample 2", "sample 3", "sample 4"]
        assert all(s["thumbnail"].startswith("data:image/jpeg;base64,") for s in listing["styles"])
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGINT)      # the CLI shuts Ray Serve down; Ray stops with it
            try:
                service.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
                service.wait(timeout=30)
