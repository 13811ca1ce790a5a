#!/usr/bin/env bash
# Create .venv in the repo root and install the project from its own files (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml (a matched pair).
    .venv/bin/python -m pip install --quiet -e '.[test,onnx,cluster]'
    rm -f .venv/.installed-* && touch "$stamp"
fi
