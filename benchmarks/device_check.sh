#!/usr/bin/env bash
# GPU check for the fused nearest-code kernel (issue 6 §3): correctness vs the float64 oracle, the AOT
# PTX through cuda-python, timings vs torch, torch eager pipeline. At most 8 minutes; no network.
# Usage: benchmarks/device_check.sh [OUT_DIR] [extra args for device_check.py]
# Writes OUT_DIR/device_check.md and OUT_DIR/device_check.json (OUT_DIR defaults to $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${1:-${OUT:-}}"
if [[ -z "$OUT_DIR" ]]; then
    echo "device_check.sh: give an output directory (argument or \$OUT)" >&2
    exit 2
fi
shift || true
mkdir -p "$OUT_DIR"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
# The package may not be installed on the device machine: import it from the tree.
PKG_DIR="$(mktemp -d)"
trap 'rm -rf "$PKG_DIR"' EXIT
ln -s "$PWD/runtime" "$PKG_DIR/quantart_runtime"
ln -s "$PWD/quantart" "$PKG_DIR/quantart"
export PYTHONPATH="$PKG_DIR${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$OUT_DIR/triton_cache}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-0}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT_DIR/nvidia_smi.csv" 2>&1 || true
# 470 s hard stop: the script stops starting sections at 400 s and writes results after each one.
status=0
timeout --signal=TERM --kill-after=10 470 "$PY" benchmarks/device_check.py --out "$OUT_DIR" --budget-s 400 "$@" \
    2>&1 | tee "$OUT_DIR/device_check.log" || status=${PIPESTATUS[0]}
rm -rf "$OUT_DIR/triton_cache"
exit "$status"
