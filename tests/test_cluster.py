"""Cluster mode for real, on loopback: a Ray cluster of a head and one worker node started with
``ray start``, the Ray Serve deployment on it, and a real S3 API (moto in server mode).

One cluster, one moto server and one deployment (2 replicas, one category slot each) serve the
whole module, in this order: both categories over HTTP and OIP v2 score as the single-process
server does (1e-4); the one-slot LRU bound holds over three categories; a tampered object
answers 503 for its category only; fit-many runs as Ray tasks and reports the category that
fails; a re-fit is published and reloaded under load without a failed request; the worker
node stops and the service keeps answering. Everything stops at the end of the module.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

try:
    import ray
except ImportError:  # never a silent skip on CI: the cluster extra must be installed there
    if os.environ.get("CI"):
        raise
    pytest.skip("ray is not installed: pip install -e '.[cluster,test]'", allow_module_level=True)

from cli.main import main as cli_main
from cluster import control
from cluster.deployment import ClusterArgs
from cluster.fit_many import fit_many
from cluster.local import LocalCluster, free_port
from model.artifact.remote import RemoteStore
from model.jobs.fit import fit
from service.app import create_app
from service.settings import Settings
from tests.conftest import config_args, tiny_config, wait_until
from tests.s3 import moto_env, new_bucket, tamper_object, version_key  # noqa: F401
from tests.test_api import test_images

TOLERANCE = 1e-4
PREFIX = "plant"
REQUEST_TIMEOUT = 120.0  # a bound for a wedged request on a busy machine, not a measurement


@pytest.fixture(scope="module")
def bucket(moto_env) -> str:
    return new_bucket()


@pytest.fixture(scope="module")
def url(bucket, tiny_artifacts) -> str:
    """alpha and beta (the tests' tiny fits) published to the bucket."""
    url = f"s3://{bucket}/{PREFIX}"
    for name in ("alpha", "beta"):
        RemoteStore(url).publish(tiny_artifacts / name)
    return url


@pytest.fixture(scope="module")
def cluster(moto_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ray-logs")
    local = LocalCluster(env=moto_env, log_dir=logs)
    try:
        local.start(workers=1)
        ray.init(address=local.address, logging_level="WARNING", log_to_driver=False)
        wait_until(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, "two alive Ray nodes", timeout=120)
        yield local
    finally:
        if ray.is_initialized():
            from ray import serve

            serve.shutdown()
        ray.shutdown()
        local.stop()


@pytest.fixture(scope="module")
def service(cluster, url, tmp_path_factory) -> str:
    """The application: 2 replicas (one per node), one category slot each; its base URL."""
    port = free_port()
    args = ClusterArgs(artifacts=url, artifact_cache=str(tmp_path_factory.mktemp("cache")),
                       max_categories_per_replica=1, num_replicas=2, replica_cpus=0.5,
                       settings={"torch_threads": 1, "max_wait_ms": 2})
    control.deploy(cluster.address, args, "127.0.0.1", port)
    service = f"http://127.0.0.1:{port}"
    service_args[service] = args
    return service


service_args: dict[str, ClusterArgs] = {}


@pytest.fixture(scope="module")
def images(tiny_data) -> list[Path]:
    return test_images(tiny_data)[:3]


def reference_scores(root: Path, images: list[Path], categories=("alpha", "beta")) -> dict[tuple[str, Path], float]:
    """(category, image path) -> the single-process server's score."""
    with TestClient(create_app(Settings(artifacts=root, torch_threads=1))) as client:
        return {(c, p): client.post(f"/inspect/{c}", files={"file": (p.name, p.read_bytes(), "image/png")},
                                         params={"outputs": "none"}).json()["score"]
                for c in categories for p in images}


def inspect(base: str, category: str, image: Path, routed: bool = True) -> httpx.Response:
    headers = {"serve_multiplexed_model_id": category} if routed else {}
    return httpx.post(f"{base}/inspect/{category}", files={"file": (image.name, image.read_bytes(), "image/png")},
                      params={"outputs": "none"}, headers=headers, timeout=REQUEST_TIMEOUT)


def infer(base: str, category: str, image: Path) -> httpx.Response:
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image.read_bytes()).decode()]}],
            "outputs": [{"name": "score"}, {"name": "map"}, {"name": "mask"}]}
    return httpx.post(f"{base}/v2/models/{category}/infer", json=body,
                      headers={"serve_multiplexed_model_id": category}, timeout=REQUEST_TIMEOUT)


def test_both_categories_over_http_and_v2_equal_the_single_process_server(service, tiny_artifacts, images):
    expected = reference_scores(tiny_artifacts, images)
    assert httpx.get(f"{service}/v2/health/ready", timeout=REQUEST_TIMEOUT).json() == {"ready": True}
    for (category, image), score in expected.items():
        r = inspect(service, category, image)
        assert r.status_code == 200, r.text
        assert r.json()["score"] == pytest.approx(score, rel=TOLERANCE, abs=TOLERANCE)
        v2 = infer(service, category, image)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        assert outputs["score"]["data"][0] == pytest.approx(score, rel=TOLERANCE, abs=TOLERANCE)
        assert outputs["map"]["shape"] == [1, 128, 128] and outputs["mask"]["datatype"] == "BOOL"
    metadata = httpx.get(f"{service}/v2/models/alpha", headers={"serve_multiplexed_model_id": "alpha"},
                         timeout=REQUEST_TIMEOUT).json()
    assert metadata["versions"][0].startswith("alpha-") and metadata["inputs"][0]["name"] == "image"
    assert inspect(service, "beta", images[0], routed=False).status_code == 200  # no routing header: served too


def states_of(base: str, replica: str) -> dict[str, str]:
    """``replica``'s category states: ``GET /categories`` until that replica answers it
    (requests without a model id go to the replica on the proxy's node first)."""
    seen: dict[str, dict[str, str]] = {}

    def answered() -> bool:
        r = httpx.get(f"{base}/categories", timeout=REQUEST_TIMEOUT)
        seen[r.headers["x-replica"]] = {c["name"]: c["state"] for c in r.json()["categories"]}
        return replica in seen

    wait_until(answered, f"GET /categories answered by replica {replica}", timeout=120, interval=0.05)
    for other, categories in seen.items():
        assert sum(s == "ready" for s in categories.values()) <= 1, (other, categories)
    return seen[replica]


def test_one_slot_per_replica_evicts_the_least_recently_used(service, url, tiny_data, images, tmp_path):
    fit(tiny_data, "gamma", tmp_path, tiny_config(seed=2))
    RemoteStore(url).publish(tmp_path / "gamma")
    asked = ("alpha", "beta", "gamma", "alpha")
    answers = [inspect(service, c, images[0], routed=False) for c in asked]
    assert [r.status_code for r in answers] == [200] * len(asked), [r.text for r in answers]
    served: dict[str, set[str]] = {}
    for category, r in zip(asked, answers):
        served.setdefault(r.headers["x-replica"], set()).add(category)
    busiest = max(served, key=lambda k: len(served[k]))
    assert len(served[busiest]) >= 2  # 3 categories, 4 requests, 2 replicas
    states = states_of(service, busiest)
    assert sum(s == "ready" for s in states.values()) == 1 and "gamma" in states, states  # the others evicted


def test_a_tampered_artifact_answers_503_for_its_category_only(service, url, bucket, tiny_data, images, tmp_path):
    fit(tiny_data, "delta", tmp_path, tiny_config(seed=4))
    RemoteStore(url).publish(tmp_path / "delta")
    tamper_object(bucket, version_key(bucket, PREFIX, "delta", "memory_bank.safetensors"))
    broken = inspect(service, "delta", images[0])
    assert broken.status_code == 503 and broken.json()["code"] == "artifact_unavailable", broken.text
    assert infer(service, "delta", images[0]).status_code == 503
    assert inspect(service, "alpha", images[0]).status_code == 200


def test_fit_many_runs_ray_tasks_and_reports_the_failed_category(cluster, bucket, tiny_data, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root / "tiles")
    (root / "broken" / "train" / "good").mkdir(parents=True)
    for i in range(12):
        (root / "broken" / "train" / "good" / f"{i}.png").write_bytes(b"not a png")
    code = cli_main(["fit-many", "--data-root", str(root), "--artifacts", f"s3://{bucket}/many",
                     "--address", cluster.address, "--cpus-per-fit", "0.5", *config_args(tiny_config())])
    out = capsys.readouterr().out
    assert code == 1, out  # one category failed
    assert "ok      tiles" in out and "FAILED  broken" in out and "1 of 2 categories fitted; failed: broken" in out
    assert RemoteStore(f"s3://{bucket}/many").categories() == ["tiles"]
    (result,) = fit_many(root, f"s3://{bucket}/many", ["tiles"], config=tiny_config(), address=cluster.address,
                         num_cpus=0.5)
    assert result.ok and result.artifact_id.startswith("tiles-") and result.location == f"s3://{bucket}/many/tiles"


class Load:
    """A small load: two threads posting alpha and beta until stopped (at most ``limit`` requests)."""

    def __init__(self, base: str, image: Path, limit: int = 400) -> None:
        self.base, self.image, self.limit = base, image, limit
        self.results: list[tuple[str, int, str | None, float | None]] = []  # category, status, artifact, score
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in ("alpha", "beta")]

    def _run(self, category: str) -> None:
        while not self.stopped.is_set() and len(self.results) < self.limit:
            try:
                r = inspect(self.base, category, self.image)
                body = r.json() if r.status_code == 200 else {}
                self.results.append((category, r.status_code, body.get("artifact_id"), body.get("score")))
            except httpx.HTTPError as exc:
                self.results.append((category, 0, type(exc).__name__, None))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=REQUEST_TIMEOUT)


def test_a_refit_is_reloaded_under_load_without_a_failed_request(service, cluster, url, tiny_data, images, tmp_path):
    refit = fit(tiny_data, "alpha", tmp_path / "arts", tiny_config(seed=9))
    expected = reference_scores(tmp_path / "arts", images[:1], categories=("alpha",))[("alpha", images[0])]
    with Load(service, images[0]) as load:
        wait_until(lambda: len(load.results) >= 4, "the load to run")
        RemoteStore(url).publish(refit.artifact)
        control.deploy(cluster.address, service_args[service], "127.0.0.1", int(service.rsplit(":", 1)[1]),
                       reload=True)
        wait_until(lambda: any(a == refit.artifact_id for _, _, a, _ in load.results[-4:]),
                   "alpha answers from the re-fit", timeout=120)
        count = len(load.results)
        wait_until(lambda: len(load.results) >= count + 6, "more requests on the re-fit")
    statuses = Counter(s for _, s, _, _ in load.results)
    assert statuses == Counter({200: len(load.results)}), statuses
    new = [score for c, _, a, score in load.results if a == refit.artifact_id]
    assert new and all(s == pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE) for s in new)


def test_the_service_keeps_answering_when_the_worker_node_stops(service, cluster, images):
    cluster.stop_node("127.0.0.3")
    wait_until(lambda: sum(n["Alive"] for n in ray.nodes()) == 1, "the worker node to leave", timeout=120)
    streak = [0]

    def five_in_a_row() -> bool:
        ok = inspect(service, "beta", images[0]).status_code == 200
        streak[0] = streak[0] + 1 if ok else 0
        return streak[0] >= 5

    wait_until(five_in_a_row, "five answers in a row after the node left", timeout=180, interval=0.1)
    answers = [inspect(service, c, images[1]) for c in ("alpha", "beta") * 4]
    assert [r.status_code for r in answers] == [200] * 8, [r.text[:200] for r in answers]
