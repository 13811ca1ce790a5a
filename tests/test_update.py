"""The line teaches the model (issue 35), below HTTP: moments and coreset that go on, the update
job, its lineage and duplicates, rollback, a killed update, a full disk and an s3:// artifact."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.main import main as cli_main
from cli.update import EXIT_NO_PARENT
from model.artifact.manifest import RollbackError
from model.artifact.store import TEST_PAUSE_ENV, load_artifact, read_manifest, rollback
from model.jobs.dataset import file_sha256, list_defects, list_images
from model.jobs.demo_data import generate_category
from model.jobs.fit import fit
from model.jobs.update import update, update_into
from model.method.coreset import greedy_coreset, random_projection
from model.method.gaussian import GaussianAccumulator
from model.serving import Inspector
from tests.conftest import REPO, kill_when_paused, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
UPDATABLE = {"calibration.holdout_fraction": 0.25, "selection.min_holdout": 2}


@pytest.fixture(scope="module")
def more_goods(tmp_path_factory) -> list[Path]:
    """Good images of the same kind as ``tiny_data``'s, not among its training images."""
    root = generate_category(tmp_path_factory.mktemp("more") / "tiles", kind="tiles", n_train=8, n_test_good=1,
                             n_test_defect=1, size=128, seed=7)
    return list_images(root / "train" / "good")


@pytest.fixture
def fitted(tmp_path, tiny_data) -> Path:
    """A tiny category that validates its choice (3 held-out goods suffice here)."""
    fit(tiny_data, "cat", tmp_path / "arts", tiny_config(**UPDATABLE))
    return tmp_path / "arts" / "cat"


def test_moments_merge_exactly():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    y = torch.randn(4, 5, 3, 3, dtype=torch.float64) + 1.0
    whole, a, b = GaussianAccumulator(), GaussianAccumulator(), GaussianAccumulator()
    whole.update(torch.cat([x, y]))
    a.update(x)
    b.update(y)
    a = GaussianAccumulator.from_moments(a.moments())  # as an update reads them back from the artifact
    a.merge(b)
    for key, value in whole.moments().items():
        torch.testing.assert_close(a.moments()[key], value, rtol=1e-5, atol=1e-6)  # m2 is kept as float32


def test_the_coreset_goes_on_from_a_bank():
    torch.manual_seed(0)
    bank = torch.randn(20, 16)
    new = torch.cat([bank[:5] + 1e-4, torch.randn(30, 16) * 3])
    chosen = greedy_coreset(new, 4, proj_dim=8, seed=0, centres=bank)
    assert not set(chosen.tolist()) & set(range(5))  # patches the bank covers already never join
    z, c = random_projection(new, 8, 0), random_projection(bank, 8, 0)
    farthest = int(torch.cdist(z, c).min(1).values.argmax())
    assert chosen[0] == farthest  # the first new centre is the patch farthest from the bank


def test_an_update_learns_new_goods_and_records_its_lineage(fitted, more_goods):
    parent = load_artifact(fitted, fit_only=True)
    report = update(fitted, goods=more_goods)
    child = load_artifact(fitted, fit_only=True)
    m, p = child.manifest, parent.manifest
    assert child.artifact_id == report.artifact_id != parent.artifact_id
    assert m.lineage.parent == p.artifact_id and m.lineage.added_goods == [file_sha256(f) for f in more_goods]
    assert report.added_goods == 8 and report.held_out == m.lineage.held_out == 2  # holdout_fraction 0.25 of 8
    assert m.training.n_images == p.training.n_images + 8 and m.training.n_holdout == p.training.n_holdout + 2
    assert child.tensors["moments"]["n"] > parent.tensors["moments"]["n"]  # 6 more images
    assert len(child.tensors["evidence"]["goods"]) == len(parent.tensors["evidence"]["goods"]) + 2
    assert len(child.tensors["moments"]["bank"]) > len(parent.tensors["moments"]["bank"])
    assert m.fit.selection["mode"] == "auto" and m.fit.selection["chosen"] == m.config.scoring
    assert m.calibration.thresholds.image > 0
    inspector = Inspector.from_artifact(fitted, device="cpu")  # what a server loads
    assert inspector.artifact_id == report.artifact_id


def test_images_learned_already_are_skipped_and_nothing_new_is_refused(fitted, more_goods, tiny_data):
    with pytest.raises(ValueError, match="learned already"):
        update(fitted, goods=list_images(tiny_data / "train" / "good")[:4])  # the fit's own images
    update(fitted, goods=more_goods[:4])
    report = update(fitted, goods=more_goods)  # 4 of them learned by the first update
    assert report.added_goods == 4 and len(report.duplicates) == 4
    with pytest.raises(ValueError, match="nothing to learn"):
        update(fitted)


def test_rollback_returns_to_the_parent_and_refuses_without_one(fitted, more_goods, capsys):
    first = read_manifest(fitted).artifact_id
    with pytest.raises(RollbackError, match="no parent"):
        rollback(fitted.parent, "cat")
    second = update(fitted, goods=more_goods).artifact_id
    assert cli_main(["rollback", "--artifact", str(fitted)]) == 0
    assert read_manifest(fitted).artifact_id == first and f"{second} -> {first}" in capsys.readouterr().out
    assert cli_main(["rollback", "--artifact", str(fitted)]) == EXIT_NO_PARENT  # the fit has no parent
    assert "no parent" in capsys.readouterr().err
    load_artifact(fitted)  # still whole


def test_labelled_defects_join_the_evidence(fitted, tiny_data):
    defects = list_defects(tiny_data)[:3]
    report = update(fitted, defects=defects)
    m = read_manifest(fitted)
    assert report.added_defects == 3 and m.training.defects.n == 3
    assert m.lineage.added_defects == [file_sha256(d.path) for d in defects]
    assert m.fit.selection["n_images"]["labelled"] == 3 and "labelled" in m.fit.selection["rankings"]


def test_the_cli_writes_its_status_file(fitted, more_goods, tmp_path):
    goods = tmp_path / "goods"
    goods.mkdir()
    for f in more_goods:
        (goods / f.name).write_bytes(f.read_bytes())
    status = tmp_path / "status.json"
    assert cli_main(["update", "--artifact", str(fitted), "--goods", str(goods), "--status-file", str(status)]) == 0
    done = __import__("json").loads(status.read_text())
    assert done["stage"] == "done" and done["artifact_id"] == read_manifest(fitted).artifact_id
    assert done["added_goods"] == 8
    assert cli_main(["update", "--artifact", str(fitted), "--goods", str(goods), "--status-file", str(status)]) == 2
    failed = __import__("json").loads(status.read_text())
    assert failed["stage"] == "failed" and "learned already" in failed["error"]


def test_an_update_killed_before_the_swap_leaves_the_live_version_serving(fitted, more_goods, tmp_path):
    live = read_manifest(fitted).artifact_id
    marker = tmp_path / "paused"
    goods = tmp_path / "goods"
    goods.mkdir()
    for f in more_goods:
        (goods / f.name).write_bytes(f.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO), TEST_PAUSE_ENV: f"before_swap:{marker}"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "update", "--artifact", str(fitted),
                             "--goods", str(goods)], cwd=REPO, env=env)
    kill_when_paused(proc, marker, "update's swap")
    assert load_artifact(fitted).artifact_id == live  # whole, verified, still the live one
    assert update(fitted, goods=more_goods).parent == live  # and the next update goes on from it


def test_a_full_disk_fails_the_update_cleanly(fitted, more_goods, monkeypatch):
    import model.artifact.store as store

    live = read_manifest(fitted).artifact_id

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        update(fitted, goods=more_goods)
    assert load_artifact(fitted).artifact_id == live
    assert not list(fitted.parent.glob(".tmp-*"))  # nothing half-written left behind


def test_an_s3_artifact_is_updated_and_rolled_back_in_the_bucket(fitted, more_goods):
    pytest.importorskip("moto")
    from model.artifact.remote import RemoteStore
    from cluster.local import MotoServer
    from tests.s3 import new_bucket

    server = MotoServer(fitted.parent.parent / "moto.log")
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in server.env().items():
                patch.setenv(key, value)
            bucket = new_bucket()
            store = RemoteStore(f"s3://{bucket}/p")
            first = store.publish(fitted)
            report, where = update_into(f"s3://{bucket}/p/cat", goods=more_goods)
            assert where == f"s3://{bucket}/p/cat" and store.pointer("cat") == report.artifact_id
            assert report.parent == first
            assert store.rollback("cat") == (report.artifact_id, first) and store.pointer("cat") == first
            with pytest.raises(RollbackError):
                store.rollback("cat")
    finally:
        server.stop()
