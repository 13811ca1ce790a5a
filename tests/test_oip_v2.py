"""KServe Open Inference Protocol v2 endpoints with the app factory: schema, equality with
``/inspect``, output selection, bad tensors (4xx, never 500) and a broken category (503 alone)."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from model.runtime.imageio import decode_image
from tests.test_api import copy_root, make_client, tamper, test_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def client(tiny_artifacts):
    with make_client(tiny_artifacts) as c:
        yield c


@pytest.fixture(scope="module")
def png(tiny_data) -> bytes:
    return test_images(tiny_data)[0].read_bytes()


def pixels_request(image: np.ndarray, batch: bool = False, **extra) -> dict:
    shape = [1, *image.shape] if batch else list(image.shape)
    return {"inputs": [{"name": "image", "shape": shape, "datatype": "UINT8", "data": image.ravel().tolist()}], **extra}


def bytes_request(*encoded: bytes, **extra) -> dict:
    data = [base64.b64encode(e).decode() for e in encoded]
    return {"inputs": [{"name": "image", "shape": [len(data)], "datatype": "BYTES", "data": data}], **extra}


def output(body: dict, name: str) -> dict:
    return next(o for o in body["outputs"] if o["name"] == name)


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "factory-inspect"


def test_model_metadata_follows_the_protocol(client):
    body = client.get("/v2/models/alpha").json()
    live = client.get("/categories/alpha").json()["artifact_id"]
    assert body["name"] == "alpha" and body["versions"] == [live] and body["platform"]
    for tensor in body["inputs"] + body["outputs"]:
        assert set(tensor) == {"name", "datatype", "shape"}
    assert [t["name"] for t in body["inputs"]] == ["image"]
    assert {t["name"] for t in body["outputs"]} >= {"score", "map", "mask"}
    assert client.get("/v2/models/alpha/ready").json() == {"name": "alpha", "ready": True}
    assert client.get("/v2/models/gamma").status_code == 404
    assert client.get("/v2/models/gamma/ready").status_code == 404


def test_infer_equals_inspect_for_pixels_and_bytes(client, png):
    inspected = client.post("/inspect/alpha", files={"file": ("a.png", png, "image/png")},
                            params={"outputs": "none"}).json()
    image = decode_image(png)
    for request in (pixels_request(image), pixels_request(image, batch=True), bytes_request(png)):
        r = client.post("/v2/models/alpha/infer", json=request)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "alpha" and body["model_version"] == inspected["artifact_id"] and body["id"]
        score = output(body, "score")
        assert score["datatype"] == "FP64" and score["shape"] == [1]
        assert score["data"][0] == pytest.approx(inspected["score"], rel=1e-6)
        assert output(body, "is_anomalous")["data"] == [inspected["is_anomalous"]]
        h, w = image.shape[:2]
        heat, mask = output(body, "map"), output(body, "mask")
        assert heat["shape"] == [1, h, w] and len(heat["data"]) == h * w and heat["datatype"] == "FP32"
        assert mask["shape"] == [1, h, w] and set(mask["data"]) <= {True, False}


def test_outputs_id_and_threshold_parameters(client, png):
    image = decode_image(png)
    body = client.post("/v2/models/beta/infer", json=pixels_request(
        image, id="req-7", outputs=[{"name": "score"}, {"name": "is_anomalous"}],
        parameters={"threshold": 1e-9})).json()
    assert body["id"] == "req-7" and [o["name"] for o in body["outputs"]] == ["score", "is_anomalous"]
    assert output(body, "is_anomalous")["data"] == [True]


def test_several_images_in_one_tensor(client, tiny_data):
    paths = test_images(tiny_data)[:3]
    images = [decode_image(p.read_bytes()) for p in paths]
    batch = np.stack(images)
    request = {"inputs": [{"name": "image", "shape": list(batch.shape), "datatype": "UINT8",
                           "data": batch.ravel().tolist()}], "outputs": [{"name": "score"}]}
    scores = client.post("/v2/models/alpha/infer", json=request).json()["outputs"][0]["data"]
    singles = [client.post("/v2/models/alpha/infer", json=bytes_request(p.read_bytes(), outputs=[{"name": "score"}]))
               .json()["outputs"][0]["data"][0] for p in paths]
    assert scores == pytest.approx(singles, rel=1e-5)


def _tensor(**fields) -> dict:
    base = {"name": "image", "shape": [2, 2, 3], "datatype": "UINT8", "data": [0] * 12}
    return {"inputs": [{**base, **fields}]}


BAD = {
    "wrong datatype": (_tensor(datatype="FP32"), 400),
    "wrong input name": (_tensor(name="img"), 400),
    "two channels": (_tensor(shape=[2, 3, 2], data=[0] * 12), 400),
    "too few values": (_tensor(data=[0] * 11), 400),
    "negative size": (_tensor(shape=[-2, -2, 3]), 400),
    "value above 255": (_tensor(data=[256] + [0] * 11), 400),
    "float pixels": (_tensor(data=[0.5] * 12), 400),
    "string pixels": (_tensor(data=["a"] * 12), 400),
    "ragged data": (_tensor(data=[[0, 0], [0]]), 400),
    "bad base64": (_tensor(datatype="BYTES", shape=[1], data=["%%%"]), 400),
    "not an image": (_tensor(datatype="BYTES", shape=[1], data=[base64.b64encode(b"hello").decode()]), 400),
    "bytes shape mismatch": (_tensor(datatype="BYTES", shape=[2], data=["aGk="]), 400),
    "unknown output": ({**_tensor(), "outputs": [{"name": "heatmap"}]}, 400),
    "bad threshold": ({**_tensor(), "parameters": {"threshold": -1}}, 400),
    "too many images": (_tensor(shape=[40, 1, 1, 3], data=[0] * 120), 413),
    "huge tensor": (_tensor(shape=[100000, 100000, 3], data=[0]), 413),
    "no inputs": ({"inputs": []}, 422),
    "two inputs": ({"inputs": _tensor()["inputs"] * 2}, 422),
    "missing data": ({"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8"}]}, 422),
    "unknown field": ({**_tensor(), "extra": 1}, 422),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tensors_get_clear_client_errors(client, case):
    request, status = BAD[case]
    r = client.post("/v2/models/alpha/infer", json=request)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "code", "request_id"} and body["error"]


def test_bad_bodies_and_names(client):
    r = client.post("/v2/models/alpha/infer", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    assert client.post("/v2/models/..%2Fx/infer", json=_tensor()).status_code in (404, 422)
    assert client.post("/v2/models/gamma/infer", json=_tensor()).status_code == 404


def test_a_broken_category_answers_503_alone(tiny_artifacts, tiny_data, tmp_path):
    root = copy_root(tiny_artifacts, tmp_path / "arts")
    tamper(root, "alpha")
    png = test_images(tiny_data)[0].read_bytes()
    with make_client(root) as c:
        broken = c.post("/v2/models/alpha/infer", json=bytes_request(png))
        assert broken.status_code == 503 and broken.json()["code"] == "artifact_unavailable"
        assert c.get("/v2/models/alpha/ready").status_code == 503
        fine = c.post("/v2/models/beta/infer", json=bytes_request(png, outputs=[{"name": "score"}]))
        assert fine.status_code == 200 and math.isfinite(fine.json()["outputs"][0]["data"][0])
        metrics = c.get("/metrics").text
        assert 'inspect_requests_total{category="alpha",status="503"}' in metrics
