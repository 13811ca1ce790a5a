"""The typed manifest: it reads back exactly what a fit wrote, and refuses what it cannot read with a
message that says to re-fit."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from model.artifact.manifest import FORMAT_VERSION, ArtifactError, Manifest
from model.artifact.store import load_artifact, read_manifest
from model.runtime.inspector import Inspector


@pytest.fixture
def written(tiny_artifacts) -> dict:
    return json.loads((tiny_artifacts / "alpha" / "manifest.json").read_text())


def test_parse_then_build_gives_back_the_written_document(written):
    manifest = Manifest.from_dict(written)
    rebuilt = json.loads(json.dumps(manifest.to_dict()))
    assert rebuilt == written
    assert list(rebuilt) == list(written)  # same key order as the file
    assert manifest.category == "alpha" and manifest.format_version == FORMAT_VERSION
    assert manifest.config.backbone.arch == "tf_efficientnet_lite0"
    assert manifest.calibration.thresholds.image > 0 and manifest.training.defect_hashes == []


def test_store_and_inspector_read_the_typed_manifest(tiny_artifacts):
    manifest = read_manifest(tiny_artifacts / "alpha")
    assert load_artifact(tiny_artifacts / "alpha").manifest == manifest
    inspector = Inspector.from_artifact(tiny_artifacts / "alpha")
    assert inspector.artifact_id == manifest.artifact_id and inspector.thresholds == manifest.calibration.thresholds


def _without(data: dict, *path: str) -> dict:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return data


@pytest.mark.parametrize("change", [
    lambda d: {**d, "format_version": FORMAT_VERSION + 1},
    lambda d: {**d, "format_version": 0},
    lambda d: _without(d, "format_version"),
    lambda d: _without(d, "calibration", "thresholds"),
    lambda d: _without(d, "training"),
    lambda d: {**d, "training": {**d["training"], "surprise": 1}},
    lambda d: {**d, "config": {**d["config"], "no_such_block": {}}},
    lambda d: {**d, "files": None},
    lambda d: [d],
], ids=["newer", "older", "unversioned", "no-thresholds", "no-training", "unknown-field", "unknown-config",
        "no-files", "not-an-object"])
def test_a_manifest_that_does_not_fit_asks_for_a_refit(written, change):
    with pytest.raises(ArtifactError, match="re-fit"):
        Manifest.from_dict(change(written), "somewhere")


def test_loading_an_old_artifact_fails_with_the_refit_message(tiny_artifacts, tmp_path):
    path = tmp_path / "old"
    shutil.copytree(tiny_artifacts / "alpha", path)
    data = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**data, "format_version": 0}))
    with pytest.raises(ArtifactError, match=r"format version 0.*re-fit"):
        Inspector.from_artifact(path)
