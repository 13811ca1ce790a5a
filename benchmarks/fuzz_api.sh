#!/usr/bin/env bash
# Property-based API fuzzing with schemathesis against a real server on loopback.
#
#   benchmarks/fuzz_api.sh [ARTIFACTS_ROOT] [MAX_EXAMPLES] [MAX_TIME_S]
#
# Starts `python -m cli.main serve` on a free port (default root: runs/reliability_artifacts,
# made by benchmarks/load_test.py), runs `schemathesis run <base>/openapi.json` with the checks
# not_a_server_error and response_schema_conformance (plus status_code_conformance and
# content_type_conformance, reported), bounded by --max-examples and --max-time, then stops
# the server; a second pass fuzzes POST /inspect with the category pinned (CATEGORY, default the
# first folder of the root). Output: runs/reliability_fuzz_api{,.inspect}.log and JUnit reports.
# schemathesis is not a project dependency: install it into a separate target, e.g.
#   .venv/bin/python -m pip install --target /tmp/relidx schemathesis
# and point RELIDX at it (default /tmp/relidx).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-runs/reliability_artifacts}
MAX_EXAMPLES=${2:-50}
MAX_TIME=${3:-240}
RELIDX=${RELIDX:-/tmp/relidx}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/reliability_fuzz_api}
mkdir -p "$(dirname "$OUT")"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

PYTHONPATH=. FACTORY_INSPECT_MAX_BODY_BYTES=1000000 $PY -m cli.main --threads 1 serve \
    --artifacts "$ROOT" --port "$PORT" > "$OUT.server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -fs "$BASE/readyz" > /dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "server exited"; tail -20 "$OUT.server.log"; exit 2; }
  sleep 0.2
done

set +e
PYTHONPATH=$RELIDX $PY -m schemathesis.cli run "$BASE/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --workers 1 --request-timeout 30 \
    --report junit --report-junit-path "$OUT.junit.xml" --no-color 2>&1 | tee "$OUT.log"
RC=${PIPESTATUS[0]}

# Pass 2: POST /inspect with the served category pinned, so cases reach upload parsing and
# decoding instead of 404 unknown_category.
CATEGORY=${CATEGORY:-$(ls "$ROOT" | head -1)}
cat > "$OUT.toml" <<TOML
[[operations]]
include-name = "POST /inspect/{category}"
parameters = { category = "$CATEGORY" }
TOML
PYTHONPATH=$RELIDX $PY -m schemathesis.cli --config-file "$OUT.toml" run "$BASE/openapi.json" \
    --include-path "/inspect/{category}" --phases coverage,fuzzing \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --workers 1 --request-timeout 30 \
    --report junit --report-junit-path "$OUT.inspect.junit.xml" --no-color 2>&1 | tee "$OUT.inspect.log"
RC2=${PIPESTATUS[0]}
[ "$RC" -ne 0 ] || RC=$RC2
set -e
echo "schemathesis exit $RC"
grep -c " 500 " "$OUT.server.log" | sed 's/^/server log lines with a 500: /' || true
exit $RC
