#!/usr/bin/env bash
# End-to-end scrape check with a real Prometheus (Debian's `prometheus` package:
# apt-get install -y prometheus; not part of CI): fit a tiny synthetic category, serve it
# on loopback, let Prometheus scrape /metrics every second, post images, then query
# rate(inspect_images_total[15s]) through Prometheus' HTTP API and require it > 0.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v prometheus >/dev/null || { echo "prometheus not on PATH (apt-get install -y prometheus)" >&2; exit 2; }
[ -x .venv/bin/factory-inspect ] || bash scripts/setup.sh

free_port() { .venv/bin/python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
APP_PORT=${APP_PORT:-$(free_port)}
PROM_PORT=${PROM_PORT:-$(free_port)}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "== fit a tiny category into $WORK/artifacts"
.venv/bin/python -c "
from model.jobs.demo_data import generate_category
generate_category('$WORK/data/tiles', kind='tiles', n_train=12, n_test_good=4, n_test_defect=8, size=128, seed=0)"
.venv/bin/factory-inspect fit --data "$WORK/data/tiles" --category tiles --artifacts "$WORK/artifacts" \
    --set backbone.weights=\"random\" --set image_size=64 --set backbone.arch=\"tf_efficientnet_lite0\" \
    --set gaussian.dims=16 2>/dev/null | sed 's/^/   /'

echo "== serve on 127.0.0.1:$APP_PORT"
.venv/bin/factory-inspect serve --artifacts "$WORK/artifacts" --host 127.0.0.1 --port "$APP_PORT" \
    >"$WORK/serve.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: factory-inspect
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:$APP_PORT"]
YAML
echo "== prometheus on 127.0.0.1:$PROM_PORT"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)

APP_PORT=$APP_PORT PROM_PORT=$PROM_PORT WORK=$WORK .venv/bin/python - <<'PY' || { echo "--- serve.log"; tail -20 "$WORK/serve.log"; echo "--- prometheus.log"; tail -20 "$WORK/prometheus.log"; exit 1; }
import json, os, time, urllib.parse, urllib.request, uuid
from pathlib import Path

app = f"http://127.0.0.1:{os.environ['APP_PORT']}"
prom = f"http://127.0.0.1:{os.environ['PROM_PORT']}"

def wait_for(url, seconds=60):
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{url} not up after {seconds}s")
        time.sleep(0.2)

def post_png(path):
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{app}/inspect/tiles?outputs=none", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)

def query(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)

wait_for(f"{app}/readyz")
wait_for(f"{prom}/-/ready")
images = sorted(Path(os.environ["WORK"], "data", "tiles", "test").rglob("*.png"))
print(f"== posting images for 8 s ({len(images)} test PNGs, round robin)")
sent, t_end = 0, time.time() + 8
while time.time() < t_end:
    post_png(images[sent % len(images)])
    sent += 1
    time.sleep(0.05)
print(f"   {sent} images posted")
time.sleep(3)  # a few more scrapes

targets = json.load(urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=5))["data"]["activeTargets"]
print("== scrape target:", [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets])
for expr in ("rate(inspect_images_total[15s])", "inspect_images_total",
             "histogram_quantile(0.95, sum by (le) (rate(inspect_request_duration_seconds_bucket[15s])))"):
    result = query(expr)
    print(f"== query {expr}\n{json.dumps(result['data']['result'], indent=1)}")
rate = query("rate(inspect_images_total[15s])")["data"]["result"]
assert rate and float(rate[0]["value"][1]) > 0, f"rate(inspect_images_total[15s]) is not > 0: {rate}"
print(f"OK: rate(inspect_images_total[15s]) = {float(rate[0]['value'][1]):.2f} images/s via Prometheus")
PY
