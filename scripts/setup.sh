#!/usr/bin/env bash
# Create .venv and install deephash into it. Usage: bash scripts/setup.sh [test|bench]
#   (no argument) runtime dependencies; "test" adds pytest, hypothesis, pytorch-metric-learning, numba (the fast extra) and the onnx extra; "bench" adds
#   pytorch-metric-learning for benchmarks/bench_mining.py.
# torch/torchvision are pinned to the release this project is measured with where the platform's
# package index serves it (torch 2.14.1 / torchvision 0.29.1 on Python 3.11 x86_64); elsewhere pip
# resolves the plain ranges in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64|arm64) pins=(torch==2.9.1 torchvision==0.24.1) ;;
    *) pins=(torch==2.14.1 torchvision==0.29.1) ;;
  esac
  "${pip[@]}" "${pins[@]}" 2>/dev/null || { echo "setup: ${pins[*]} not served here; installing current releases" >&2; "${pip[@]}" torch torchvision; }
fi
case "$extra" in
  "") "${pip[@]}" -e . ;;
  test) "${pip[@]}" -e '.[test]' ;;
  bench) "${pip[@]}" -e '.[test,bench]' ;;
  *) echo "usage: bash scripts/setup.sh [test|bench]" >&2; exit 2 ;;
esac
