"""Where a benchmark ran: hardware, software versions, and how busy the machine was."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return gpus


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def hardware_info() -> dict:
    """CPU model, logical/physical cores, memory (GiB) and NVIDIA GPUs (name, memory, driver)."""
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        physical, mem_gb = None, None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": usable,
            "physical_cores": physical, "memory_gb": mem_gb, "machine": platform.machine(),
            "os": platform.platform(), "gpus": _gpus()}


def software_info() -> dict:
    """Python, the versions of the relevant packages that are installed, CUDA/cuDNN of torch if any."""
    versions = {name: _version(name) for name in (
        "quantart", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "numpy", "pillow",
        "triton", "tensorrt", "cuda-python")}
    info = {"python": sys.version.split()[0], "versions": {k: v for k, v in versions.items() if v},
            "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
                    if k in os.environ}}
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import onnxruntime as ort
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


def now_utc() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def proc_status(key: str, pid: int | str = "self") -> int:
    """A memory line of ``/proc/<pid>/status`` in bytes (``key``: "VmRSS:", "VmHWM:", ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise KeyError(key)
