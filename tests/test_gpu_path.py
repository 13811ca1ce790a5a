"""The CUDA execution path: device preprocessing (checked on CPU tensors here), the
precision option, and, where a GPU is present, CUDA against CPU, graphs against eager and
reduced precision against fp32."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from model.runtime.imageio import preprocess, preprocess_on_device, resize_rgb, resize_weights, stage
from model.runtime.inspector import Inspector, check_precision
from model.runtime.process import configure_device

CPU = torch.device("cpu")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def camera_like(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB ``uint8`` ``[h, w, 3]`` (noise blurred like optics would)."""
    noise = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def grey_levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel difference of two normalised inputs ``[B, 3, S, S]``, in grey levels."""
    return (a - b).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255.0


@pytest.mark.parametrize("src,dst,area", [(900, 256, True), (512, 256, True), (300, 256, False), (100, 256, False)])
def test_resize_weights_are_row_stochastic(src, dst, area):
    w = resize_weights(src, dst, area)
    assert w.shape == (dst, src)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)


def test_integer_area_weights_are_box_means():
    w = resize_weights(8, 4, area=True)
    np.testing.assert_allclose(w, np.kron(np.eye(4), [[0.5, 0.5]]))


@pytest.mark.parametrize(
    "h,w,max_fraction",
    [(900, 900, 1e-4), (512, 512, 0.0), (1024, 768, 0.1), (257, 900, 1e-4), (300, 200, 0.2), (64, 80, 0.2)],
)
def test_device_preprocess_matches_opencv(h, w, max_fraction):
    """Within one grey level everywhere; off by one only in ``max_fraction`` of values
    (float summation order for area, OpenCV's fixed-point arithmetic for bilinear)."""
    image = camera_like(h, w)
    levels = grey_levels(preprocess([image], 256, MEAN, STD), preprocess_on_device([image], 256, MEAN, STD, CPU))
    assert levels.max() <= 1.0 + 1e-3
    assert (levels > 1e-3).float().mean() <= max_fraction


def test_same_size_input_is_passed_through_exactly():
    image = camera_like(256, 256)
    x = preprocess_on_device([image], 256, MEAN, STD, CPU)
    assert torch.equal(x, preprocess([resize_rgb(image, 256)], 256, MEAN, STD))


def test_mixed_sizes_keep_their_order():
    images = [camera_like(900, 900, 1), camera_like(300, 400, 2), camera_like(900, 900, 3)]
    batch = preprocess_on_device(images, 256, MEAN, STD, CPU)
    for i, image in enumerate(images):
        assert torch.equal(batch[i : i + 1], preprocess_on_device([image], 256, MEAN, STD, CPU))


def test_precision_is_validated():
    assert check_precision("fp32", CPU, "torch") == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        check_precision("fp8", CPU, "torch")
    with pytest.raises(ValueError, match="CUDA"):
        check_precision("bf16", CPU, "torch")
    with pytest.raises(ValueError, match="CUDA"):
        check_precision("fp16", torch.device("cuda"), "onnxruntime")


def test_cpu_inspector_keeps_its_path(tiny_artifacts):
    inspector = Inspector.from_artifact(tiny_artifacts / "alpha")
    assert inspector.features is inspector._fp32_features
    assert inspector._graphs is None and inspector.dtype == torch.float32
    with pytest.raises(ValueError, match="CUDA"):
        inspector.configure_execution("bf16")
    result = inspector.inspect([camera_like(128, 128)])[0]
    assert result.score == pytest.approx(float(result.anomaly_map.max()))
    assert set(result.timings_ms) == {"preprocess", "features", "nns", "gaussian", "amc", "postprocess"}


def _scores_and_maps(inspector: Inspector, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    results = inspector.inspect(images)
    return np.array([r.score for r in results]), np.stack([r.anomaly_map for r in results])


@pytest.fixture
def exact_cuda_math():
    """What a serving or evaluating process does at start-up on CUDA (``configure_device``),
    undone afterwards so the switch does not leak into other tests."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    configure_device("cuda")
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_configure_device_switches_tf32_off_for_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        configure_device("cpu")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_device("cuda")
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@needs_cuda
@pytest.mark.usefixtures("exact_cuda_math")
def test_cuda_fp32_agrees_with_cpu(tiny_artifacts):
    images = [camera_like(300, 300, s) for s in range(3)]
    cpu = _scores_and_maps(Inspector.from_artifact(tiny_artifacts / "alpha"), images)
    cuda = _scores_and_maps(Inspector.from_artifact(tiny_artifacts / "alpha", "cuda"), images)
    np.testing.assert_allclose(cuda[0], cpu[0], rtol=1e-4)
    np.testing.assert_allclose(cuda[1], cpu[1], rtol=1e-4, atol=1e-4 * float(np.abs(cpu[1]).max()))


@needs_cuda
@pytest.mark.usefixtures("exact_cuda_math")
def test_cuda_graphs_equal_eager(tiny_artifacts):
    inspector = Inspector.from_artifact(tiny_artifacts / "alpha", "cuda")
    images = [camera_like(300, 300, s) for s in range(2)]
    graphed = _scores_and_maps(inspector, images)
    assert set(inspector.inspect(images)[0].timings_ms) == {"preprocess", "model", "postprocess"}
    inspector.configure_execution(cuda_graphs=False)
    eager = _scores_and_maps(inspector, images)
    np.testing.assert_allclose(graphed[1], eager[1], rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_stays_close(tiny_artifacts, precision):
    inspector = Inspector.from_artifact(tiny_artifacts / "alpha", "cuda")
    images = [camera_like(300, 300, s) for s in range(3)]
    ref = _scores_and_maps(inspector, images)
    inspector.configure_execution(precision)
    low = _scores_and_maps(inspector, images)
    assert low[1].dtype == np.float32
    np.testing.assert_allclose(low[0], ref[0], rtol=0.05)


@needs_cuda
def test_device_preprocess_on_cuda_equals_cpu_tensors():
    images = [camera_like(900, 900, s) for s in range(2)]
    cpu = preprocess_on_device(images, 256, MEAN, STD, CPU)
    cuda = preprocess_on_device(images, 256, MEAN, STD, torch.device("cuda")).cpu()
    assert grey_levels(cpu, cuda).max() <= 1.0 + 1e-3


@pytest.mark.parametrize("n", [1, 3, 12])
@pytest.mark.parametrize("threaded", [False, True])
def test_staging_copies_every_row(n, threaded, monkeypatch):
    if threaded:
        monkeypatch.setattr("model.runtime.imageio.STAGING_MIN_THREADED_BYTES", 0)
    images = [camera_like(97, 61, s) for s in range(n)]
    out = np.zeros((n, 97, 61, 3), np.uint8)
    stage(images, out)
    np.testing.assert_array_equal(out, np.stack(images))


def test_serve_precision_setting_needs_cuda_and_torch():
    from pydantic import ValidationError

    from service.settings import Settings

    assert Settings(device="cuda", precision="fp16").precision == "fp16"
    for bad in ({"precision": "fp16"}, {"device": "cuda", "runtime": "onnxruntime", "precision": "bf16"}):
        with pytest.raises(ValidationError, match="needs device=cuda and runtime=torch"):
            Settings(**bad)
