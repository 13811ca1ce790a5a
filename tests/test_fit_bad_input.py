"""Bad training folders: an image that does not decode is named, or skipped and recorded."""

from __future__ import annotations

import shutil

import pytest

from cli.main import main as cli_main, parse_pairs
from model.artifact.store import load_artifact
from model.jobs.fit import fit
from model.runtime.imageio import ImageDecodeError
from tests.conftest import config_args, tiny_config


@pytest.fixture
def with_a_bad_image(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / "train" / "good" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return data


def test_an_undecodable_training_image_is_named(with_a_bad_image, tmp_path):
    with pytest.raises(ImageDecodeError, match=r"broken\.png"):
        fit(with_a_bad_image, "bad", tmp_path / "arts", tiny_config())


def test_skip_bad_images_leaves_it_out_and_records_it(with_a_bad_image, tiny_data, tmp_path):
    report = fit(with_a_bad_image, "bad", tmp_path / "arts", tiny_config(), skip_bad_images=True)
    manifest = load_artifact(report.artifact).manifest
    assert [line.split(":")[0] for line in manifest.training.skipped] == ["broken.png"]
    assert manifest.training.n_images == len(list((tiny_data / "train" / "good").iterdir()))
    assert report.skipped == manifest.training.skipped


def test_the_cli_names_the_file_or_skips_it(with_a_bad_image, tmp_path, capsys):
    args = ["fit", "--data", str(with_a_bad_image), "--category", "bad", "--artifacts", str(tmp_path / "arts"),
            *config_args(tiny_config())]
    assert cli_main(args) == 2
    assert "broken.png" in capsys.readouterr().err
    assert cli_main([*args, "--skip-bad-images"]) == 0
    assert "skipped    broken.png" in capsys.readouterr().out


def test_too_few_good_images_is_a_clear_error(tiny_data, tmp_path):
    data = tmp_path / "few"
    (data / "train" / "good").mkdir(parents=True)
    for f in sorted((tiny_data / "train" / "good").iterdir())[:4]:
        shutil.copy(f, data / "train" / "good" / f.name)
    with pytest.raises(ValueError, match="too few"):
        fit(data, "few", tmp_path / "arts", tiny_config())


def test_a_set_without_a_value_is_a_clear_error():
    assert parse_pairs(["head.weights=[1, 2]", "scoring=nns", "x.y= 3"]) == {"head.weights": [1, 2], "scoring": "nns",
                                                                            "x.y": 3}
    with pytest.raises(SystemExit, match="--setting expects key=value, got 'max_batch_size'"):
        parse_pairs(["max_batch_size"], "--setting")
