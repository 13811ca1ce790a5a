#!/usr/bin/env bash
# Set up (if needed), then: generate a synthetic category, fit it, serve it, inspect images over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/factory-inspect --threads "$(nproc)" demo "$@"
