"""The KubeRay RayService manifest (k8s/rayservice.yaml) and the Dockerfile target it runs, checked
without a cluster.

What validates what:
- every pod template (head and worker groups) is a Kubernetes ``PodTemplateSpec``: validated
  strictly (unknown fields refused) by ``kubernetes-validate`` (PyPI) against its Kubernetes
  1.33 JSON schemas;
- ``serveConfigV2`` is what KubeRay hands to Ray Serve: validated by Ray's own schema,
  ``ray.serve.schema.ServeDeploySchema`` (the ``ray`` package pinned in the ``cluster`` extra);
  its import path builds the application from its ``args`` (``ClusterArgs``);
- the RayService's own fields: no package on PyPI or npm ships KubeRay's CRD schema, so the
  fields used are checked against KubeRay's ``ray.io/v1`` API as written down here from its
  reference (names, types, rayStartParams values as strings); the CRD itself is not applied.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.test_deploy import dockerfile_instructions

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "k8s" / "rayservice.yaml"
KUBERNETES = "1.33"

# KubeRay ray.io/v1 fields this manifest may use (RayService, RayClusterSpec, head/worker group specs).
SPEC_FIELDS = {"serveConfigV2", "rayClusterConfig", "serviceUnhealthySecondThreshold",
               "deploymentUnhealthySecondThreshold", "serveService", "upgradeStrategy", "excludeHeadPodFromServeSvc"}
CLUSTER_FIELDS = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                  "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions"}
HEAD_FIELDS = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "numOfHosts",
                 "scaleStrategy", "idleTimeoutSeconds", "suspend"}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def pod_templates(manifest: dict) -> dict[str, dict]:
    cluster = manifest["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


def test_the_rayservice_uses_kuberay_v1_fields(manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = manifest["spec"]
    assert set(spec) <= SPEC_FIELDS and isinstance(spec["serveConfigV2"], str)
    cluster = spec["rayClusterConfig"]
    assert set(cluster) <= CLUSTER_FIELDS and isinstance(cluster["enableInTreeAutoscaling"], bool)
    assert set(cluster["headGroupSpec"]) <= HEAD_FIELDS
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"rayStartParams values must be strings: {params}"
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_FIELDS
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("group", ["head", "gpu"])
def test_pod_templates_are_valid_kubernetes(manifest, group):
    template = pod_templates(manifest)[group]
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
    assert kubernetes_validate.validate(pod_template, KUBERNETES, strict=True) == KUBERNETES
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True


def test_the_validator_refuses_a_broken_pod_template(manifest):
    template = pod_templates(manifest)["head"]
    broken = {**template, "spec": {**template["spec"], "containers": [{**template["spec"]["containers"][0],
                                                                        "imagePullPolicy": 3}]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": broken}, KUBERNETES, strict=True)


def test_serve_config_is_valid_for_ray_serve_and_builds_the_app(manifest):
    from ray.serve.schema import ServeDeploySchema

    from cluster.deployment import DEPLOYMENT, ClusterArgs

    config = ServeDeploySchema(**yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert builder.__name__ == "build_app"
    args = ClusterArgs(**app.args)
    assert args.artifacts.startswith("s3://") and args.replica_gpus >= 1
    assert [d.name for d in app.deployments] == [DEPLOYMENT] and "reload" in app.deployments[0].user_config
    assert app.route_prefix == "/"
    assert builder(app.args) is not None  # the bound application, as a replica's controller builds it


def test_the_image_is_the_dockerfile_ray_target(manifest):
    stages = [args.split() for kw, args in dockerfile_instructions() if kw == "FROM"]
    names = [s[-1] for s in stages if len(s) == 3 and s[1].upper() == "AS"]
    assert "ray" in names and names[-1] == "server", "the server stays the default (last) target"
    tag = re.search(r"docker build --target ray -t (\S+) \.", (REPO / "Dockerfile").read_text()).group(1)
    images = {c["image"] for t in pod_templates(manifest).values() for c in t["spec"]["containers"]}
    assert images == {tag}


def test_the_ray_version_matches_the_cluster_extra(manifest):
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cluster"]
    (pin,) = [d for d in extra if d.startswith("ray")]
    assert pin.endswith("==" + manifest["spec"]["rayClusterConfig"]["rayVersion"])
