#!/usr/bin/env bash
# Set up (if needed) with the test extras and run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,onnx,cluster
exec .venv/bin/python -m pytest -q "$@"
