"""Artifacts in S3 (a real S3 API: moto in server mode): publish (version first, pointer last),
list, fetch with the local loader's hash check, cache, and a single-process server on
``--artifacts s3://...`` (tampered object -> 503 for that category only; reload picks up a
re-publish)."""

from __future__ import annotations

import json

import boto3
import pytest
from fastapi.testclient import TestClient

from cli.main import main as cli_main
from model.artifact.remote import POINTER, RemoteSource, RemoteStore
from model.jobs.publishing import fit_into
from model.serving import ArtifactError, read_manifest
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_config
from tests.s3 import moto_env, new_bucket, object_keys, tamper_object, version_key  # noqa: F401
from tests.test_api import test_images

pytestmark = pytest.mark.usefixtures("moto_env", "one_torch_thread")


@pytest.fixture
def bucket() -> str:
    return new_bucket()


def publish_both(tiny_artifacts, url: str) -> dict[str, str]:
    store = RemoteStore(url)
    return {c: store.publish(tiny_artifacts / c) for c in ("alpha", "beta")}


def test_publish_writes_the_version_then_the_pointer(tiny_artifacts, bucket):
    ids = publish_both(tiny_artifacts, f"s3://{bucket}/plant/a")
    keys = object_keys(bucket)
    manifest = read_manifest(tiny_artifacts / "alpha")
    version = f"plant/a/alpha/versions/{ids['alpha']}/"
    assert {version + n for n in [*manifest.files, "manifest.json"]} <= set(keys)
    assert f"plant/a/alpha/{POINTER}" in keys
    assert RemoteStore(f"s3://{bucket}/plant/a").categories() == ["alpha", "beta"]
    assert RemoteStore(f"s3://{bucket}/plant").categories() == []  # categories are one level below the prefix


def test_fetch_verifies_caches_and_matches_the_local_artifact(tiny_artifacts, bucket, tmp_path):
    url = f"s3://{bucket}"
    ids = publish_both(tiny_artifacts, url)
    source = RemoteSource(url, tmp_path / "cache")
    path = source.fetch("alpha")
    assert path == tmp_path / "cache" / "alpha" / ids["alpha"]
    assert read_manifest(path).files == read_manifest(tiny_artifacts / "alpha").files
    before = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert source.fetch("alpha") == path and {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == before
    assert source.published_id("beta") == ids["beta"] and source.has("beta") and not source.has("gamma")
    with pytest.raises(ArtifactError, match="no artifact published"):
        source.fetch("gamma")


def test_a_tampered_object_is_refused_and_nothing_is_cached(tiny_artifacts, bucket, tmp_path):
    url = f"s3://{bucket}"
    publish_both(tiny_artifacts, url)
    tamper_object(bucket, version_key(bucket, "", "alpha", "memory_bank.safetensors"))
    source = RemoteSource(url, tmp_path / "cache")
    with pytest.raises(ArtifactError, match="does not match its SHA-256"):
        source.fetch("alpha")
    assert not any((tmp_path / "cache" / "alpha").iterdir())  # the temporary download is gone
    assert source.fetch("beta").is_dir()


def test_a_publish_that_dies_before_the_pointer_leaves_readers_on_the_old_version(
        tiny_artifacts, tiny_data, bucket, tmp_path, monkeypatch):
    url = f"s3://{bucket}"
    old = publish_both(tiny_artifacts, url)["alpha"]
    store = RemoteStore(url)
    real_put = store.client.put_object

    def no_pointer(**kwargs):
        if kwargs["Key"].endswith(POINTER):
            raise ConnectionError("killed before the pointer")
        return real_put(**kwargs)

    monkeypatch.setattr(store.client, "put_object", no_pointer)
    refit, _ = fit_into(tiny_data, "alpha", tmp_path / "arts", config=tiny_config(seed=7))
    with pytest.raises(ConnectionError):
        store.publish(refit.artifact)
    assert refit.artifact_id != old
    assert any(f"/versions/{refit.artifact_id}/" in k for k in object_keys(bucket))  # the version is there...
    assert RemoteSource(url, tmp_path / "cache").fetch("alpha").name == old  # ...but readers still get the old one


def test_bad_pointers_and_urls_are_clear_errors(bucket, tmp_path):
    boto3.client("s3").put_object(Bucket=bucket, Key=f"alpha/{POINTER}", Body=b"not json")
    with pytest.raises(ArtifactError, match="not a valid pointer"):
        RemoteSource(f"s3://{bucket}", tmp_path).fetch("alpha")
    boto3.client("s3").put_object(Bucket=bucket, Key=f"beta/{POINTER}", Body=json.dumps({"artifact_id": "../x"}))
    with pytest.raises(ArtifactError):
        RemoteSource(f"s3://{bucket}", tmp_path).fetch("beta")
    with pytest.raises(ValueError, match="s3://"):
        RemoteStore("s3:///no-bucket")


def test_old_versions_are_pruned_to_the_last_two(tiny_artifacts, tiny_data, bucket, tmp_path):
    url = f"s3://{bucket}/p"
    first = RemoteStore(url).publish(tiny_artifacts / "alpha")
    ids = [first] + [fit_into(tiny_data, "alpha", url, config=tiny_config(seed=s))[0].artifact_id for s in (11, 12)]
    versions = {k.split("/")[3] for k in object_keys(bucket, "p/alpha/versions/")}
    assert versions == set(ids[1:])


def test_cli_fit_and_publish_to_a_bucket(tiny_artifacts, tiny_data, bucket, capsys):
    assert cli_main(["publish", "--artifact", str(tiny_artifacts / "beta"), "--to", f"s3://{bucket}/x"]) == 0
    assert "published  beta-" in capsys.readouterr().out
    assert RemoteStore(f"s3://{bucket}/x").categories() == ["beta"]


def test_single_process_server_on_a_bucket(tiny_artifacts, tiny_data, bucket, tmp_path):
    """503 for the tampered category only; a re-publish and a reload serve the new version."""
    url = f"s3://{bucket}/srv"
    ids = publish_both(tiny_artifacts, url)
    tamper_object(bucket, version_key(bucket, "srv", "beta", "backbone.safetensors"))
    png = test_images(tiny_data)[0].read_bytes()
    settings = Settings(artifacts=url, artifact_cache=tmp_path / "cache", torch_threads=1)
    with TestClient(create_app(settings), client=("127.0.0.1", 5000)) as client:
        assert client.get("/readyz").status_code == 200
        ok = client.post("/inspect/alpha", files={"file": ("a.png", png, "image/png")}, params={"outputs": "none"})
        assert ok.status_code == 200 and ok.json()["artifact_id"] == ids["alpha"]
        broken = client.post("/inspect/beta", files={"file": ("a.png", png, "image/png")})
        assert broken.status_code == 503 and broken.json()["code"] == "artifact_unavailable"
        assert "SHA-256" in client.get("/categories/beta").json()["error"]
        assert str(tmp_path) not in client.get("/categories/beta").json()["error"]
        refit, _ = fit_into(tiny_data, "alpha", url, config=tiny_config(seed=3))
        reloaded = client.post("/categories/alpha/reload")
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["artifact_id"] == refit.artifact_id
        assert reloaded.json()["previous_artifact_id"] == ids["alpha"]
        again = client.post("/inspect/alpha", files={"file": ("a.png", png, "image/png")}, params={"outputs": "none"})
        assert again.json()["artifact_id"] == refit.artifact_id
        assert client.post("/categories/gamma/reload").status_code == 404
