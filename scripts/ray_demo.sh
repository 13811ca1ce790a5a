#!/usr/bin/env bash
# Cluster mode on one machine: an S3 API (moto) and a two-node Ray cluster on loopback; fit the
# demo category and publish it to the bucket; deploy on Ray Serve; inspect a defective and a good
# image over HTTP and OIP v2; tear everything down. Exit 0 only if all of it worked.
# PYTHON_BIN=/path/to/venv/bin/python uses an existing environment instead of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON_BIN:-}" ]; then
    bash scripts/setup.sh cluster,test
    PYTHON_BIN=.venv/bin/python
fi
export PATH="$(cd "$(dirname "$PYTHON_BIN")" && pwd):$PATH" RAY_USAGE_STATS_ENABLED=0
exec "$PYTHON_BIN" -m cluster.demo "$@"
