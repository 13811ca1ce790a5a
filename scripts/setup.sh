#!/usr/bin/env bash
# Create .venv in the repo root and install the project from its own files (idempotent).
#   bash scripts/setup.sh                     the runtime: fit, evaluate, serve, the demo
#   bash scripts/setup.sh test,onnx,cluster   and these extras of pyproject.toml (what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
extras=${1:-}
spec=.
[ -z "$extras" ] || spec=".[$extras]"
stamp=.venv/.installed-$( (sha256sum pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml (a matched pair).
    .venv/bin/python -m pip install --quiet -e "$spec"
    touch "$stamp"
fi
