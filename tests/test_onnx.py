"""The ONNX Runtime feature path agrees with torch, library and served.

Tolerances (float32 on CPU, the same weights in both runtimes; operator order differs):

* image scores: relative difference <= 1e-4 (the serving contract's bound);
* anomaly maps: max |map_ort - map_torch| <= 1e-3 * max |map_torch|, per image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from model.runtime.imageio import decode_image, preprocess
from model.runtime.inspector import Inspector
from model.runtime.onnx_runtime import OrtFeaturePath, choose_providers, export_feature_path
from service.app import create_app
from service.settings import Settings

SCORE_RTOL = 1e-4
MAP_REL_ATOL = 1e-3
LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture(scope="module")
def images(tiny_data) -> list[Path]:
    """Defective and good test images of the tiny category (defects first)."""
    paths = sorted((tiny_data / "test").rglob("*.png"), key=lambda p: (p.parent.name == "good", p.name))
    return paths[:3] + paths[-2:]


@pytest.fixture(scope="module")
def pair(tiny_artifacts) -> tuple[Inspector, Inspector]:
    """(torch, onnxruntime) inspectors of the same artifact."""
    path = tiny_artifacts / "alpha"
    return Inspector.from_artifact(path), Inspector.from_artifact(path, runtime="onnxruntime")


def decoded(paths: list[Path]) -> list[np.ndarray]:
    return [decode_image(p.read_bytes()) for p in paths]


def test_scores_and_maps_match_torch(pair, images):
    torch_insp, ort_insp = pair
    assert isinstance(ort_insp.features, OrtFeaturePath)
    rel, worst_map = [], []
    for img in decoded(images):
        want = torch_insp.inspect([img])[0]
        got = ort_insp.inspect([img])[0]
        rel.append(abs(got.score - want.score) / abs(want.score))
        worst_map.append(np.abs(got.anomaly_map - want.anomaly_map).max() / np.abs(want.anomaly_map).max())
        assert got.verdict().is_anomalous == want.verdict().is_anomalous
    assert max(rel) <= SCORE_RTOL, f"max relative score difference {max(rel):.2e}"
    assert max(worst_map) <= MAP_REL_ATOL, f"max map difference {max(worst_map):.2e} of the map's max"


def test_dynamic_batch(pair, images):
    torch_insp, ort_insp = pair
    x = preprocess(decoded(images[:3]), torch_insp.config.image_size, torch_insp.mean, torch_insp.std)
    with torch.inference_mode():
        want = torch_insp.features(x)
    for batch in (1, 3):
        got = ort_insp.features(x[:batch])
        for g, w in zip(got, want, strict=True):
            assert g.shape == w[:batch].shape and g.dtype == torch.float32
            torch.testing.assert_close(g, w[:batch], rtol=1e-4, atol=1e-4 * float(w.abs().max()))
    one = ort_insp.maps(x[:1])
    three = ort_insp.maps(x)
    torch.testing.assert_close(three[:1], one, rtol=1e-4, atol=1e-5 * float(one.abs().max()))


def test_export_to_file_passes_the_checker(pair, tmp_path):
    torch_insp, _ = pair
    path = tmp_path / "features.onnx"
    export_feature_path(torch_insp.features, torch_insp.config.image_size, path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    buffer = io.BytesIO()
    export_feature_path(torch_insp.features, torch_insp.config.image_size, buffer)
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))


def test_providers_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(cpu, everything) == ["CPUExecutionProvider"]
    assert choose_providers(cuda, everything) == everything
    assert choose_providers(cuda, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_invalid_runtime_is_a_clear_error(tiny_artifacts):
    with pytest.raises(ValueError, match="unknown runtime 'tensorflow'.*torch, onnxruntime"):
        Inspector.from_artifact(tiny_artifacts / "alpha", runtime="tensorflow")
    with pytest.raises(ValueError, match="runtime"):
        Settings(artifacts=tiny_artifacts, runtime="tensorflow")


def test_runtime_from_the_environment(monkeypatch, tiny_artifacts):
    monkeypatch.setenv("FACTORY_INSPECT_RUNTIME", "onnxruntime")
    assert Settings(artifacts=tiny_artifacts).runtime == "onnxruntime"
    monkeypatch.delenv("FACTORY_INSPECT_RUNTIME")
    assert Settings(artifacts=tiny_artifacts).runtime == "torch"


def test_served_score_equals_torch(pair, images, tiny_artifacts):
    torch_insp, _ = pair
    app = create_app(Settings(artifacts=tiny_artifacts, runtime="onnxruntime", torch_threads=1))
    with TestClient(app, client=LOOPBACK) as client:
        served = client.app.state.registry.get("alpha").inspector
        assert served.runtime == "onnxruntime"
        for path in (images[0], images[-1]):
            data = path.read_bytes()
            want = torch_insp.inspect([decode_image(data)])[0]
            r = client.post("/inspect/alpha", files={"file": ("part.png", data, "image/png")},
                            params={"outputs": "none"})
            assert r.status_code == 200, r.text
            assert r.json()["score"] == pytest.approx(want.score, rel=SCORE_RTOL)
            assert r.json()["is_anomalous"] == want.verdict().is_anomalous
