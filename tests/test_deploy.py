"""Deployment files (Dockerfile, docker-compose.yml, Prometheus, Grafana) against the code they deploy.

No Docker engine and no network: the files are parsed and checked for consistency with
the CLI parser, the app's routes, the pyproject console script and the metric names the
server really exports. ``docker-compose config`` runs only when the v1 binary is on PATH,
``docker compose config`` (the smoke override) only when the Compose v2+ plugin is. The image
is built and started for real by scripts/docker_smoke.sh (.ci/run), not here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from cli.main import build_parser
from service.settings import Settings
from tests.promtext import label_names, sample_names

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "docker" / "prometheus.yml"
SMOKE_COMPOSE = REPO / "docker" / "compose.smoke.yml"
SMOKE_SCRIPT = REPO / "scripts" / "docker_smoke.sh"
REQUIREMENTS = REPO / "docker" / "requirements.py"
GRAFANA = REPO / "docker" / "grafana"
RUNTIME_FOLDERS = {"data"}  # the operator's images, documented in docker-compose.yml (artifacts/ is in the repo)


# --------------------------------------------------------------------------- parsing helpers


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def instruction(name: str) -> list[str]:
    return [args for kw, args in dockerfile_instructions() if kw == name]


def exec_form(args: str) -> list[str]:
    """A Dockerfile CMD/ENTRYPOINT/HEALTHCHECK CMD as argv (JSON exec form or shell form)."""
    args = args.strip()
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


class ComposeLoader(yaml.SafeLoader):
    """Compose v2's merge tags: ``!reset`` and ``!override`` (kept as ("reset"|"override", value))."""


def _tagged(tag: str):
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, object]:
        if isinstance(node, yaml.MappingNode):
            return tag, loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return tag, loader.construct_sequence(node, deep=True)
        return tag, loader.construct_scalar(node)
    return construct


for _tag in ("reset", "override"):
    ComposeLoader.add_constructor(f"!{_tag}", _tagged(_tag))


def smoke_compose() -> dict:
    return yaml.load(SMOKE_COMPOSE.read_text(), Loader=ComposeLoader)


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage name."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            current = args.split()[-1]
            out[current] = []
        elif current is not None:
            out[current].append((keyword, args))
    return out


def requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", REQUIREMENTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def service(name: str) -> dict:
    return compose()["services"][name]


def parse_cli(argv: list[str]):
    """argv[0] must be the pyproject console script; the rest must parse with the real CLI parser."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert argv[0] in scripts, f"{argv[0]!r} is not a console script of pyproject.toml ({sorted(scripts)})"
    assert scripts[argv[0]] == "cli.main:main"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits on an unknown flag or a bad choice
        raise AssertionError(f"factory-inspect rejects {argv[1:]}") from exc


def healthcheck_url(argv: list[str]) -> str:
    urls = [m for a in argv for m in re.findall(r"https?://[^\s'\"]+", a)]
    assert len(urls) == 1, f"expected one URL in the healthcheck {argv}"
    return urls[0]


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [t["expr"] for t in panel.get("targets", [])]
    return exprs


# PromQL words that look like metric names but are not.
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase", "histogram_quantile",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "topk", "bottomk",
    "clamp_min", "clamp_max", "abs", "delta", "deriv", "avg_over_time", "max_over_time", "min_over_time",
    "sum_over_time", "vector", "scalar", "time", "le",
}


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression: identifiers outside {...} matchers, by (...) lists,
    [...] ranges and strings, that are not functions, keywords or numbers."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text))
    return {n for n in names if n not in PROMQL_WORDS}


# --------------------------------------------------------------------------- the served app


def get_paths(routes, prefix: str = "") -> set[str]:
    """GET paths of app.routes, descending into included routers (FastAPI >= 0.160 keeps them lazily,
    as ``original_router`` with an ``include_context.prefix``; older versions flatten them)."""
    paths = set()
    for route in routes:
        if hasattr(route, "original_router"):
            context = getattr(route, "include_context", None)
            paths |= get_paths(route.original_router.routes, prefix + getattr(context, "prefix", ""))
        elif hasattr(route, "routes") and not hasattr(route, "methods"):  # a Mount
            paths |= get_paths(route.routes, prefix + getattr(route, "path", ""))
        elif "GET" in (getattr(route, "methods", None) or ()):
            paths.add(prefix + route.path)
    return paths


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory) -> set[str]:
    """GET routes of the real app; each one used by a healthcheck must also answer 200 live."""
    app = create_app(Settings(artifacts=tmp_path_factory.mktemp("empty-artifacts")))
    paths = get_paths(app.routes)
    assert {"/healthz", "/readyz", "/metrics"} <= paths, paths
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    return paths


@pytest.fixture(scope="module")
def metrics_text(tiny_artifacts, tiny_data) -> str:
    """The /metrics exposition after real inspect requests, a reload and an error."""
    png = sorted((tiny_data / "test").rglob("*.png"))[0].read_bytes()
    settings = Settings(artifacts=tiny_artifacts, reload_key="deploy-test")
    with TestClient(create_app(settings)) as client:
        r = client.post("/inspect/alpha", files={"file": ("part.png", png, "image/png")}, params={"outputs": "none"})
        assert r.status_code == 200, r.text
        r = client.post("/categories/alpha/reload", headers={"Authorization": "Bearer deploy-test"})
        assert r.status_code == 200, r.text  # so inspect_reloads_total{category,result} is exported too
        files = [("files", (f"part{i}.png", png, "image/png")) for i in range(8)]  # 8: the drift minimum
        r = client.post("/inspect/alpha", files=files, params={"outputs": "none"})
        assert r.status_code == 200, r.text  # so the drift gauges have samples (fresh window after the reload)
        r = client.post("/inspect/alpha", content=b"not an image", headers={"Content-Type": "image/png"})
        assert r.status_code == 400, r.text  # so inspect_errors_total{category,code} is exported too
        return client.get("/metrics").text


@pytest.fixture(scope="module")
def exported_metrics(metrics_text) -> set[str]:
    """Every sample name on /metrics (with _bucket/_sum/_count suffixes)."""
    names = sample_names(metrics_text)
    assert "inspect_images_total" in names and "inspect_request_duration_seconds_bucket" in names
    return names


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_copy_sources_exist() -> None:
    copies = instruction("COPY") + instruction("ADD")
    assert copies, "the Dockerfile copies nothing"
    for args in copies:
        parts = [p for p in (json.loads(args) if args.startswith("[") else args.split()) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY source {src!r} is not in the repo"
    dockerignore = (REPO / ".dockerignore").read_text().split()
    for copied in ("pyproject.toml", "model", "service"):
        assert copied not in dockerignore, f".dockerignore excludes {copied}, which the Dockerfile copies"
    for args in copies:  # a source under an ignored folder must be re-included by a ! line
        for src in [p for p in args.split() if not p.startswith("--")][:-1]:
            parts = Path(src).parts
            if any("/".join(parts[:i]) in dockerignore for i in range(1, len(parts))):
                assert f"!{src}" in dockerignore, f".dockerignore excludes {src}, which the Dockerfile copies"


def test_dockerfile_installs_project_and_gpu_runtime() -> None:
    runs = " ".join(instruction("RUN"))
    assert "pip install" in runs and "pyproject.toml" in runs and re.search(r"pip install --no-deps \.", runs)
    assert "onnxruntime-gpu" in runs
    base = instruction("FROM")[0].split()[0]  # the first stage's base image (later stages build on it)
    args = dict(a.split("=", 1) for a in instruction("ARG") if "=" in a)
    image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), base)
    assert re.fullmatch(r"nvidia/cuda:1[2-9]\.\S+|pytorch/pytorch:\S*cuda\S*", image), f"not a CUDA image: {image}"


def test_dockerfile_cmd_is_the_console_script(app_routes) -> None:
    (cmd,) = instruction("CMD")
    assert not instruction("ENTRYPOINT")
    args = parse_cli(exec_form(cmd))
    assert args.command == "serve" and args.device == "cuda" and args.host == "0.0.0.0"
    assert args.artifacts == "/artifacts"
    (expose,) = instruction("EXPOSE")
    assert int(expose.split("/")[0]) == args.port


def test_dockerfile_stages_server_last_and_ray_for_kuberay() -> None:
    """The default (last) target is the server compose builds; the ``ray`` target adds the
    cluster extra and the cluster package, runs as non-root and has wget (KubeRay's probes)."""
    by_stage = stages()
    assert list(by_stage)[-1] == "server" and "ray" in by_stage
    ray_runs = " ".join(a for k, a in by_stage["ray"] if k == "RUN")
    assert "requirements.py pyproject.toml ray" in ray_runs and "wget" in ray_runs and "import ray" in ray_runs
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert requirements_module().requirements(str(REPO / "pyproject.toml"), "ray") == \
        pyproject["optional-dependencies"]["cluster"]
    assert [a for k, a in by_stage["ray"] if k == "USER"][-1].split(":")[0] not in {"root", "0"}
    assert not [a for k, a in by_stage["ray"] if k in {"CMD", "ENTRYPOINT"}], "KubeRay supplies the command"
    assert ("COPY", "cluster ./cluster") in [(k, a) for stage in by_stage.values() for k, a in stage]


def test_requirements_script_is_the_runtime_install() -> None:
    """docker/requirements.py (the image's pip list, and the smoke's wheelhouse) is every runtime
    dependency, the backbones extra and onnx without its CPU onnxruntime; the Dockerfile adds
    onnxruntime-gpu to it."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extra = pyproject["optional-dependencies"]
    runtime = requirements_module().requirements(str(REPO / "pyproject.toml"), "runtime")
    assert runtime[:len(pyproject["dependencies"])] == pyproject["dependencies"]
    assert set(extra["backbones"]) <= set(runtime) and "onnx>=1.16" in runtime
    assert not [r for r in runtime if r.startswith("onnxruntime")]
    runs = " ".join(a for k, a in stages()["runtime"] if k == "RUN")
    assert 'requirements.py pyproject.toml runtime "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"' in runs
    out = subprocess.run([sys.executable, str(REQUIREMENTS), str(REPO / "pyproject.toml"), "runtime", "extra==1"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == runtime + ["extra==1"]


def test_pip_source_arguments_default_to_pypi() -> None:
    """The PIP_* build arguments (the smoke's local wheelhouse) are declared without a value in each
    stage that runs pip, so a line PC's build without them uses PyPI, and none is kept as ENV."""
    names = {"PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_TRUSTED_HOST"}
    for stage in ("runtime", "ray"):
        args = {a for k, a in stages()[stage] if k == "ARG"}
        assert names <= args, f"{stage}: {sorted(names - args)} not declared (without a default)"
    envs = " ".join(instruction("ENV"))
    assert not [n for n in names if n in envs]


def test_dockerfile_runs_as_non_root() -> None:
    users = instruction("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_dockerfile_healthcheck_hits_a_real_route(app_routes) -> None:
    (hc,) = instruction("HEALTHCHECK")
    argv = exec_form(hc[hc.index("CMD") + 3:])
    assert argv[0] == "python" and "urllib" in " ".join(argv), "healthcheck must not assume curl"
    url = urlparse(healthcheck_url(argv))
    assert url.path in app_routes and url.path == "/healthz"
    assert url.port == int(instruction("EXPOSE")[0].split("/")[0])


# --------------------------------------------------------------------------- docker-compose.yml


def test_compose_ports_match_dockerfile_and_prometheus() -> None:
    expose = int(instruction("EXPOSE")[0].split("/")[0])
    inspect = service("inspect")
    container_ports = {int(str(p).split(":")[-1].split("/")[0]) for p in inspect["ports"]}
    assert container_ports == {expose}
    assert parse_cli(inspect["command"]).port == expose
    targets = [t for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"inspect:{expose}"]


def test_compose_healthcheck_hits_a_real_route(app_routes) -> None:
    hc = service("inspect")["healthcheck"]["test"]
    assert hc[0] in {"CMD", "CMD-SHELL"}
    url = urlparse(healthcheck_url(hc[1:]))
    assert url.path in app_routes and url.path == "/healthz"


def test_compose_inspect_serves_the_artifacts_on_gpu_and_may_publish_updates() -> None:
    inspect = service("inspect")
    assert inspect["build"] == "." and inspect["restart"] == "unless-stopped"
    assert "./artifacts:/artifacts" in inspect["volumes"]  # writable: the line's updates publish there
    args = parse_cli(inspect["command"])
    assert args.command == "serve" and args.artifacts == "/artifacts" and args.device == "cuda"


@pytest.mark.parametrize("name", ["inspect", "fit"])
def test_compose_gpu_reservation(name: str) -> None:
    devices = service(name)["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in devices


def test_compose_fit_job_flags_exist() -> None:
    fit = service("fit")
    assert fit["profiles"] == ["fit"]
    argv = [re.sub(r"\$\{CATEGORY:-(\w+)\}", r"\1", a) for a in fit["command"]]
    args = parse_cli(argv)
    assert args.command == "fit" and args.data == "/data" and args.artifacts == "/artifacts"
    assert args.category == "demo"
    assert "./data:/data:ro" in fit["volumes"] and "./artifacts:/artifacts" in fit["volumes"]


def test_compose_volume_host_paths_exist() -> None:
    spec = compose()
    named = set(spec.get("volumes") or {})
    for name, svc in spec["services"].items():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host in named:
                continue
            rel = Path(host).relative_to(".")
            assert (REPO / rel).exists() or rel.parts[0] in RUNTIME_FOLDERS, f"{name}: {host} is not in the repo"


def test_compose_monitoring_services() -> None:
    prom, graf = service("prometheus"), service("grafana")
    assert prom["image"].startswith("prom/prometheus") and graf["image"].startswith("grafana/grafana")
    assert any(v.startswith("./docker/prometheus.yml:") for v in prom["volumes"])
    assert any(v.startswith("./docker/grafana/provisioning:/etc/grafana/provisioning") for v in graf["volumes"])
    dashboards_mount = next(v for v in graf["volumes"] if v.startswith("./docker/grafana/dashboards:"))
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "factory-inspect.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == dashboards_mount.split(":")[1]
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["type"] == "prometheus" and urlparse(ds["url"]).hostname == "prometheus"
    panels_ds = {t["datasource"]["uid"] for p in json.loads((GRAFANA / "dashboards" / "factory-inspect.json")
                                                             .read_text())["panels"] for t in p["targets"]}
    assert panels_ds == {ds["uid"]}


def test_docker_compose_config_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (v1, Debian package docker-compose) not on PATH: compose file not validated")
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([binary, "-f", str(COMPOSE), "--profile", "fit", "config", "-q"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- the CPU smoke override


def without_category(argv: list[str]) -> list[str]:
    return [re.sub(r"\$\{CATEGORY:-(\w+)\}", r"\1", a) for a in argv]


def test_smoke_override_changes_only_network_device_gpu_and_folders() -> None:
    """docker/compose.smoke.yml runs the line PC's inspect and fit on CPU, on the host's network,
    with no GPU reservation and host folders; the command is otherwise the same, and everything it
    does not name (image, healthcheck, environment, user, restart) stays the line PC's."""
    base, smoke = compose()["services"], smoke_compose()["services"]
    assert set(smoke) == {"inspect", "fit", "prometheus"}, "Grafana cannot be built here: not in the smoke"
    expose = int(instruction("EXPOSE")[0].split("/")[0])
    for name in ("inspect", "fit"):
        svc = smoke[name]
        assert svc["network_mode"] == "host" and svc["deploy"] == ("reset", {})
        args, line_pc = parse_cli(without_category(svc["command"])), parse_cli(without_category(base[name]["command"]))
        assert args.device == "cpu" and line_pc.device == "cuda"
        assert {**vars(args), "device": None, "host": None} == {**vars(line_pc), "device": None, "host": None}
    assert set(smoke["inspect"]) == {"network_mode", "deploy", "ports", "command", "volumes"}
    assert set(smoke["fit"]) == {"network_mode", "deploy", "command", "volumes"}
    assert smoke["inspect"]["ports"] == ("reset", [])
    inspect_args = parse_cli(smoke["inspect"]["command"])
    assert inspect_args.host == "127.0.0.1" and inspect_args.port == expose  # loopback; the healthcheck's port
    tag, inspect_volumes = smoke["inspect"]["volumes"]
    assert tag == "override" and len(inspect_volumes) == 1
    assert re.fullmatch(r"\$\{SMOKE_ARTIFACTS:\?[^}]*\}:/artifacts:ro", inspect_volumes[0])
    tag, fit_volumes = smoke["fit"]["volumes"]
    assert tag == "override" and len(fit_volumes) == 2
    assert re.fullmatch(r"\$\{SMOKE_DATA:\?[^}]*\}:/data:ro", fit_volumes[0])
    assert re.fullmatch(r"\$\{SMOKE_ARTIFACTS:\?[^}]*\}:/artifacts", fit_volumes[1])  # read-write


def test_smoke_prometheus_scrapes_the_line_pc_target() -> None:
    """The smoke's Prometheus (Debian's, built locally) reads docker/prometheus.yml unchanged: the
    target's host name resolves to loopback through extra_hosts; same flags plus a loopback listen."""
    base, smoke = compose()["services"]["prometheus"], smoke_compose()["services"]["prometheus"]
    targets = [t for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]]
    hosts = {t.split(":")[0] for t in targets}
    assert {f"{h}:127.0.0.1" for h in hosts} <= set(smoke["extra_hosts"])
    assert smoke["command"][:len(base["command"])] == base["command"]
    assert smoke["command"][len(base["command"]):] == ["--web.listen-address=127.0.0.1:9090"]
    assert "volumes" not in smoke and smoke["network_mode"] == "host" and smoke["ports"] == ("reset", [])
    dockerfile = (REPO / "docker" / "prometheus-debian.Dockerfile").read_text()
    assert f"-t {smoke['image']} " in dockerfile and f"PROM_IMAGE={smoke['image']}" in SMOKE_SCRIPT.read_text()
    assert 'ENTRYPOINT ["/usr/bin/prometheus"]' in dockerfile  # compose's command gives the flags, as upstream


def test_smoke_script_is_wired_into_ci() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/docker_smoke.sh" in ci
    script = SMOKE_SCRIPT.read_text()
    assert "-f docker-compose.yml -f docker/compose.smoke.yml" in script
    assert "--bridge=none --iptables=false" in script and "trap cleanup EXIT" in script
    base = re.search(r"^BASE_IMAGE=(\S+)", script, re.M).group(1)
    assert f"ARG BASE_IMAGE={base}" in (REPO / "docker" / "prometheus-debian.Dockerfile").read_text()
    assert subprocess.run(["bash", "-n", str(SMOKE_SCRIPT)], capture_output=True, timeout=60).returncode == 0
    pins = [line for line in (REPO / "docker" / "compose-plugin.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"\S+==\S+ --hash=sha256:[0-9a-f]{64}", line) for line in pins)


def compose_v2() -> list[str] | None:
    """argv of a Compose v2+ CLI plugin (`docker compose`), or None."""
    for docker in ("/usr/bin/docker", shutil.which("docker")):
        if docker and os.path.exists(docker):
            probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                return [docker, "compose"]
    return None


def test_docker_compose_v2_config_of_the_smoke(tmp_path) -> None:
    """Compose itself merges docker-compose.yml and the smoke override: no GPU, host network, CPU."""
    argv = compose_v2()
    if argv is None:
        pytest.skip("no `docker compose` (v2+ plugin; scripts/docker_smoke.sh installs it): override not merged")
    env = {**os.environ, "SMOKE_DATA": str(tmp_path / "data"), "SMOKE_ARTIFACTS": str(tmp_path / "artifacts")}
    result = subprocess.run(argv + ["-f", str(COMPOSE), "-f", str(SMOKE_COMPOSE), "--profile", "fit", "config",
                                    "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("inspect", "fit"):
        assert "deploy" not in services[name] and services[name]["network_mode"] == "host"
        assert parse_cli(services[name]["command"]).device == "cpu"
        assert services[name]["image"] == service(name)["image"]
    assert services["inspect"]["healthcheck"]["test"] == service("inspect")["healthcheck"]["test"]
    mounts = {v["target"]: v for v in services["inspect"]["volumes"]}
    assert mounts["/artifacts"]["source"] == str(tmp_path / "artifacts") and mounts["/artifacts"]["read_only"]
    mounts = {v["target"]: v for v in services["fit"]["volumes"]}
    assert not mounts["/artifacts"].get("read_only") and mounts["/data"]["read_only"]


# --------------------------------------------------------------------------- Grafana dashboard


def test_metric_name_extraction() -> None:
    expr = 'sum by (category) (rate(inspect_verdicts_total{verdict="defect"}[5m])) / sum(rate(x_total[1m]))'
    assert metric_names(expr) == {"inspect_verdicts_total", "x_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(a_bucket[5m])))") == {"a_bucket"}


def test_dashboard_uses_only_exported_metrics(exported_metrics) -> None:
    exprs = dashboard_exprs()
    assert exprs
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= exported_metrics, f"not exported by the server: {sorted(used - exported_metrics)}"
    wanted = {"inspect_images_total", "inspect_request_duration_seconds_bucket", "inspect_verdicts_total",
              "inspect_requests_total", "inspect_batch_size_bucket", "inspect_gpu_memory_bytes"}
    assert wanted <= used, f"dashboard misses {sorted(wanted - used)}"
    drift = {"inspect_score_drift_ratio", "inspect_recent_anomaly_rate"}
    assert drift <= used, f"dashboard misses {sorted(drift - used)}"


def test_dashboard_labels_are_real(metrics_text) -> None:
    """Every label in a selector or a by (...) clause is one the metrics carry (or Prometheus' instance/job)."""
    labels = {"instance", "job"} | label_names(metrics_text)
    for expr in dashboard_exprs():
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", expr))
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            used |= {g.strip() for g in group.split(",") if g.strip()}
        assert used <= labels, f"{expr}: unknown labels {sorted(used - labels)}"


def test_promtool_accepts_config_and_dashboard_queries(tmp_path) -> None:
    """Prometheus' own parser on docker/prometheus.yml and on every dashboard expression (as recording rules)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) not on PATH: PromQL syntax not checked by Prometheus")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = [{"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_artifacts_folder_is_tracked_and_mounted() -> None:
    """The default artifacts root exists in the repo (its README.md tracked, fits ignored), is
    the folder the compose server mounts (writable: updates publish there) and serves, and stays out
    of the image."""
    readme = REPO / "artifacts" / "README.md"
    assert readme.is_file()
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("no git checkout: tracking of artifacts/README.md not checked")
    tracked = subprocess.run(["git", "ls-files", "artifacts/README.md"], cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=True)
    assert tracked.stdout.strip() == "artifacts/README.md", "artifacts/README.md is not tracked by git"
    inspect = service("inspect")
    args = parse_cli(inspect["command"])
    mounts = [v.split(":") for v in inspect["volumes"]]
    source, _, mode = next(m + [""] * (3 - len(m)) for m in mounts if m[1] == args.artifacts)
    assert (COMPOSE.parent / source).resolve() == readme.parent.resolve() and mode == ""
    assert "artifacts" in (REPO / ".dockerignore").read_text().split()
    assert Settings.model_fields["artifacts"].default == Path("artifacts")
