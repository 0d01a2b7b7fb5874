#!/usr/bin/env bash
# GPU check of the fused nearest-code kernel and the device memory path (benchmarks/device_check.py):
# kernel vs float64 oracle, AOT PTX for this driver through cuda-python, timings vs torch, the
# cuda_mem device path, the TensorRT runner's data path (threads, devices, pool), the torch eager
# pipeline. At most 8 minutes; no network; Pillow not needed.
#
# Usage: benchmarks/device_check.sh [OPTIONS] [OUT_DIR] [OPTIONS]     (options anywhere; see --help)
# OUT_DIR (or --out DIR, or $OUT) may be relative to the directory you call it from.
# Writes OUT_DIR/device_check.{json,md} after every section, OUT_DIR/device_check.log, nvidia_smi.csv.
# Output format: docs/device_check.md. Exit: 0 all checks pass, 1 a check failed, 2 usage / no GPU.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$HERE/.venv/bin/python" ]]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
# One parser (device_check.py's): resolve OUT_DIR from the caller's directory before anything else.
for arg in "$@"; do
    if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then exec "$PY" "$HERE/benchmarks/device_check.py" --help; fi
done
OUT_DIR="$("$PY" "$HERE/benchmarks/device_check.py" "$@" --resolve-out)" || exit 2
mkdir -p "$OUT_DIR"

# The packages may not be installed on the device machine: the pipeline section imports quantart
# from the tree (the kernel and cuda_mem modules are loaded from their files).
PKG_DIR="$(mktemp -d)"
trap 'rm -rf "$PKG_DIR" "$OUT_DIR/triton_cache"' EXIT
ln -s "$HERE/quantart" "$PKG_DIR/quantart"
export PYTHONPATH="$PKG_DIR${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT_DIR/triton_cache}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-0}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT_DIR/nvidia_smi.csv" 2>&1 || true
# 470 s hard stop: the script stops starting sections after --budget-s (default 400 s) and has
# written its results after each one.
status=0
timeout --signal=TERM --kill-after=10 470 "$PY" "$HERE/benchmarks/device_check.py" "$@" --out "$OUT_DIR" \
    2>&1 | tee "$OUT_DIR/device_check.log" || status=${PIPESTATUS[0]}
exit "$status"
