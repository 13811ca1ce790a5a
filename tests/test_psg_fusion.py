"""PSG fine-tuning and LGFFP fusion: what trains, what is kept, and the paper's CaiT wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from model.artifact.store import load_artifact
from model.method.backbone import WeightsError, timm_hub_state_dict
from model.jobs.dataset import list_images
from model.jobs.fit import fit
from model.jobs.variant import build_feature_path
from model.method.fusion import LayerConcat, TokenFusion, resample_pos_embed, resize_to
from model.runtime.imageio import preprocess, read_image, resize_rgb
from model.runtime.inspector import Inspector
from model.training.psg import dense_loss, fine_tune, needs_training
from tests.conftest import tiny_config

CAIT = "cait_xxs24_224"
# A few quick steps: enough to move every trained weight.
QUICK = {"psg.max_steps": 3, "psg.batch_size": 4, "fusion.heads": 2, "fusion.lr": 0.01}


@pytest.fixture(scope="module")
def good_images(tiny_data) -> list[np.ndarray]:
    return [resize_rgb(read_image(str(f)), 64) for f in list_images(tiny_data / "train" / "good")]


@pytest.fixture(scope="module")
def cait_file(tmp_path_factory) -> Path:
    """A randomly initialised CaiT saved as safetensors: stands in for real CaiT weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cait") / f"{CAIT}.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(CAIT).state_dict().items()}, str(path))
    return path


def trained(config, images):
    features, mean, std = build_feature_path(config)
    before = {k: v.clone() for k, v in features.state_dict().items()}
    report = fine_tune(features, images, config, mean, std)
    return features, before, report


def changed(before: dict, after: dict, prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def test_psg_trains_the_backbone_reproducibly(good_images):
    config = tiny_config(**{"psg.enabled": True, **QUICK})
    a, before, report = trained(config, good_images)
    b, _, _ = trained(config, good_images)
    after = a.state_dict()
    assert report.steps == 3 and report.epochs[0]["loss"] > 0
    moved = changed(before, after, "backbone.")
    assert any(k.endswith("weight") for k in moved)
    assert not any("running_" in k for k in moved), "BatchNorm statistics must stay frozen by default"
    assert all(torch.equal(after[k], b.state_dict()[k]) for k in after), "same seed, different weights"
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_anchor_keeps_the_good_features_near_their_start(good_images):
    x = preprocess(good_images[:4], 64, *build_feature_path(tiny_config())[1:])

    def drift(anchor: float) -> float:
        config = tiny_config(**{"psg.enabled": True, "psg.freeze_through": 1, "psg.lr": 0.01, "psg.anchor": anchor, **QUICK})
        features, _, _ = trained(config, good_images)
        start, _, _ = build_feature_path(config)
        with torch.no_grad():
            old, new = start.eval().backbone(x)[1:], features.backbone(x)[1:]
        return float(sum((a - b).pow(2).mean() / b.pow(2).mean() for a, b in zip(new, old)))

    free, anchored = drift(0.0), drift(5.0)
    assert 0 < anchored < 0.5 * free


def test_batchnorm_statistics_adapt_when_unfrozen(good_images):
    config = tiny_config(**{"psg.enabled": True, "psg.freeze_batchnorm": False, **QUICK})
    features, before, _ = trained(config, good_images)
    assert any("running_mean" in k for k in changed(before, features.state_dict(), "backbone."))


def test_fusion_alone_keeps_the_backbone(good_images):
    config = tiny_config(**{"fusion.enabled": True, "psg.enabled": False, **QUICK})
    assert needs_training(config) and not needs_training(tiny_config())
    features, before, _ = trained(config, good_images)
    after = features.state_dict()
    assert not changed(before, after, "backbone.")
    assert changed(before, after, "fusion.blocks.") and changed(before, after, "fusion.pos_embed")


def test_psg_auto_must_be_resolved_before_training(good_images):
    config = tiny_config(**{"fusion.enabled": True, **QUICK})
    features, mean, std = build_feature_path(config)
    with pytest.raises(ValueError, match="resolved"):
        fine_tune(features, good_images, config, mean, std)


def test_progress_shows_loss_and_accuracy(good_images):
    seen = []

    class Bar:
        def update(self, n=1):
            pass

        def set_postfix(self, **kw):
            seen.append(kw)

        def close(self):
            pass

    config = tiny_config(**{"psg.enabled": True, **QUICK})
    features, mean, std = build_feature_path(config)
    fine_tune(features, good_images, config, mean, std, progress=lambda desc, total: Bar())
    assert len(seen) == 3 and set(seen[0]) == {"loss", "acc"}


@pytest.mark.parametrize("overrides", [{"psg.enabled": True}, {"fusion.enabled": True},
                                       {"psg.enabled": True, "fusion.enabled": True, "fusion.grid_layer": 2},
                                       {"fusion.enabled": True, "fusion.grid_layer": 2, "fusion.mode": "residual"}])
def test_fitted_blocks_live_in_the_artifact(tiny_data, tmp_path, overrides):
    config = tiny_config(**overrides, **QUICK)
    report = fit(tiny_data, "cat", tmp_path, config)
    artifact = load_artifact(report.artifact)
    assert ("fusion" in artifact.tensors) == config.fusion.enabled
    manifest = json.loads((report.artifact / "manifest.json").read_text())
    assert manifest["fit"]["psg"]["steps"] == 3
    # The server's path, rebuilt from the artifact alone, reproduces the fit's held-out scores.
    inspector = Inspector.from_artifact(artifact)
    held = [read_image(str(tiny_data / "train" / "good" / n)) for n in manifest["training"]["holdout_files"]]
    scores = [r.score for r in inspector.inspect(held)]
    assert np.isclose(max(scores), manifest["calibration"]["holdout_scores"]["max"], rtol=1e-5)


def test_without_fusion_the_gaussian_gets_the_concatenation():
    features, _, _ = build_feature_path(tiny_config())
    assert isinstance(features.fusion, LayerConcat)


def test_paper_wiring_with_cait_weights_from_a_file(cait_file, tiny_data, tmp_path):
    config = tiny_config(**{"fusion.enabled": True, "fusion.source": "cait", "fusion.cait_arch": CAIT,
                            "fusion.cait_weights": str(cait_file), "gaussian.layers": [1, 2]})
    features, mean, std = build_feature_path(config)
    fusion = features.fusion
    assert isinstance(fusion, TokenFusion) and len(fusion.blocks) == 11
    reference = timm.create_model(CAIT)
    reference.load_state_dict(load_file(str(cait_file)))
    for ours, theirs in zip(fusion.blocks, reference.blocks[:11], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    grid = (64 // 4, 64 // 4)  # layer 1's grid: the paper concatenates layers 1 and 2 there
    assert fusion.grid == grid and fusion.pos_embed.shape == (1, grid[0] * grid[1], 192)
    assert fusion.out_channels == 192 and features.gauss_dims.max() < 192

    # Recompute the paper's wiring by hand: concat(l1, l2) + proj(l3) -> tokens -> 11 CaiT blocks.
    x = preprocess([read_image(str(list_images(tiny_data / "train" / "good")[0]))], 64, mean, std)
    with torch.no_grad():
        l1, l2, l3 = features.backbone(x)
        fused = torch.cat([l1, resize_to(l2, grid)], 1) + resize_to(fusion.proj(l3), grid)
        tokens = fusion.embed(fused.flatten(2).transpose(1, 2))
        tokens = tokens + resample_pos_embed(reference.pos_embed, grid)
        for block in reference.blocks[:11]:
            tokens = block(tokens)
        want = fusion.pool(tokens.transpose(1, 2).reshape(1, 192, *grid))
        assert torch.allclose(fusion([l1, l2, l3]), want, atol=1e-5)

    report = fit(tiny_data, "paper", tmp_path, config)
    assert Inspector.from_artifact(report.artifact).features.fusion.grid == grid


def test_residual_fusion_adds_the_token_update_to_the_fine_local_features(good_images):
    config = tiny_config(**{"fusion.enabled": True, "fusion.grid_layer": 2, "fusion.mode": "residual", "psg.enabled": False,
                            **QUICK})
    features, _, _ = trained(config, good_images)
    fusion = features.fusion
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        l1, l2, l3 = features.backbone(x)
        fine, grid = l1.shape[-2:], l2.shape[-2:]
        local = torch.cat([l1, resize_to(l2, fine)], 1)
        start = (resize_to(local, grid) + resize_to(fusion.proj(l3), grid)).flatten(2).transpose(1, 2)
        start = start + fusion.pos_embed
        tokens = start
        for block in fusion.blocks:
            tokens = block(tokens)
        update = (tokens - start).transpose(1, 2).reshape(2, -1, *grid)
        want = fusion.pool(local + resize_to(update, fine))
        got = fusion([l1, l2, l3])
    assert got.shape[-2:] == fine and fusion.out_channels == local.shape[1]
    assert torch.allclose(got, want, atol=1e-5)
    # The blocks contribute: the output is not the plain concatenation.
    assert not torch.allclose(got, fusion.pool(local), atol=1e-4)


def test_dense_loss_targets_the_changed_fraction_of_each_cell():
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # the top-left cell of a 2x2 grid is wholly changed
    assert torch.isclose(dense_loss(torch.zeros(1, 1, 2, 2), masks), torch.log(torch.tensor(2.0)))
    sure = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert dense_loss(sure, masks) < 1e-6 < dense_loss(-sure, masks)


def test_dense_loss_trains_the_fusion_differently(good_images):
    base = {"fusion.enabled": True, "fusion.grid_layer": 2, "fusion.mode": "residual", "psg.enabled": False, **QUICK}
    plain, _, _ = trained(tiny_config(**base), good_images)
    dense, _, _ = trained(tiny_config(**base, **{"fusion.dense_loss": 1.0}), good_images)
    assert not torch.equal(plain.fusion.blocks[0].attn.qkv.weight, dense.fusion.blocks[0].attn.qkv.weight)


def test_residual_fusion_needs_matching_widths_and_a_known_mode(cait_file):
    with pytest.raises(ValueError, match="residual fusion needs token width"):
        build_feature_path(tiny_config(**{"fusion.enabled": True, "fusion.source": "cait", "fusion.cait_arch": CAIT,
                                          "fusion.cait_weights": str(cait_file), "fusion.mode": "residual"}))
    with pytest.raises(ValueError, match="unknown fusion mode"):
        build_feature_path(tiny_config(**{"fusion.enabled": True, "fusion.mode": "sideways"}))


def test_cait_through_the_timm_loader_with_a_local_file(cait_file):
    state = timm_hub_state_dict(CAIT, local_file=str(cait_file))
    assert torch.equal(state["blocks.0.attn.qkv.weight"], load_file(str(cait_file))["blocks.0.attn.qkv.weight"])


def test_wrong_cait_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(bad))
    config = tiny_config(**{"fusion.enabled": True, "fusion.source": "cait", "fusion.cait_arch": CAIT,
                            "fusion.cait_weights": str(bad)})
    with pytest.raises(WeightsError, match="does not hold cait_xxs24_224 weights"):
        build_feature_path(config)


def test_unknown_fusion_source_and_orphan_fusion_are_rejected():
    with pytest.raises(ValueError, match="unknown fusion source"):
        build_feature_path(tiny_config(**{"fusion.enabled": True, "fusion.source": "deit"}))
    with pytest.raises(ValueError, match="feeds the Gaussian branch"):
        tiny_config(**{"fusion.enabled": True, "gaussian.enabled": False})


@pytest.mark.parametrize("mode", ["tokens", "residual"])
def test_onnxruntime_runs_the_fused_path(tiny_data, tmp_path, mode):
    """The fusion blocks export with the backbone: ONNX Runtime agrees with torch (bounds as test_onnx)."""
    config = tiny_config(**{"fusion.enabled": True, "fusion.grid_layer": 2, "fusion.mode": mode, **QUICK})
    report = fit(tiny_data, "fused", tmp_path, config)
    ours, ort = Inspector.from_artifact(report.artifact), Inspector.from_artifact(report.artifact, runtime="onnxruntime")
    for path in sorted((tiny_data / "test").rglob("*.png"))[:3]:
        image = read_image(str(path))
        want, got = ours.inspect([image])[0], ort.inspect([image])[0]
        assert abs(got.score - want.score) <= 1e-4 * abs(want.score)
        assert np.abs(got.anomaly_map - want.anomaly_map).max() <= 1e-3 * np.abs(want.anomaly_map).max()


def test_a_fine_tuned_backbone_is_reusable_as_a_weights_file(tiny_data, tmp_path):
    """An artifact's backbone.safetensors (e.g. PSG-trained on a GPU) seeds another fit."""
    first = fit(tiny_data, "psg", tmp_path, tiny_config(**{"psg.enabled": True, **QUICK}))
    weights = first.artifact / "backbone.safetensors"
    features, _, _ = build_feature_path(tiny_config(**{"backbone.weights": str(weights)}))
    assert all(torch.equal(v, load_file(str(weights))[k]) for k, v in features.backbone.state_dict().items())


def test_freeze_through_keeps_the_early_layers(good_images):
    """psg.freeze_through=2: layers 1-2 (the Gaussian's input) keep their weights; layer 3 trains."""
    config = tiny_config(**{"psg.enabled": True, "psg.freeze_through": 2, **QUICK})
    features, before, _ = trained(config, good_images)
    moved = changed(before, features.state_dict(), "backbone.")
    frozen_prefixes = ("backbone.conv_stem", "backbone.bn1", "backbone.blocks.0.", "backbone.blocks.1.", "backbone.blocks.2.")
    assert moved and not any(k.startswith(frozen_prefixes) for k in moved)
