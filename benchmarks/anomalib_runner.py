"""Fit and run one anomalib model for ``anomalib_side_by_side.py``; runs inside the anomalib venv.

    runs/anomalib-venv/bin/python benchmarks/anomalib_runner.py <job.json>

The job file (written by ``anomalib_side_by_side.py``) names the method, the data folder,
the backbone weights (a safetensors state dict of timm's ``features_only`` network built
from our embedded offline weights), the input normalisation, the test images and the
latency images. Nothing is downloaded: the backbone is created with ``pre_trained=False``
and loaded strictly from that file. Outputs, in ``job["out_dir"]``:

* ``result.json``: fit seconds (model construction with the weights, then ``Engine.fit``),
  the backbone check against our features on a probe input, batch-1 latency of every
  sample (ms), the PatchCore bank size, versions.
* ``maps.npy`` ``[N, S, S]`` float32 and ``scores.npy`` ``[N]``: the raw anomaly maps and
  image scores of anomalib's torch model (before its post-processor), in the order of
  ``job["test_files"]``; the caller computes the metrics.

This file imports nothing from the repository: the anomalib venv has none of its deps.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

log = logging.getLogger("anomalib_runner")


def read_rgb(path: str) -> np.ndarray:
    """Decoded RGB ``uint8`` ``[H, W, 3]`` (PIL, as our ``read_image`` and anomalib's reader)."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def build_model(job: dict[str, Any]) -> Any:
    """The anomalib Lightning module for ``job["method"]``, with our weights and pre-processing."""
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    size = job["image_size"]
    transform = Compose([Resize((size, size), antialias=True), Normalize(mean=job["mean"], std=job["std"])])
    common = {
        "backbone": job["arch"],
        "layers": job["layers"],
        "pre_trained": False,
        "pre_processor": PreProcessor(transform=transform),
        "evaluator": False,
        "visualizer": False,
    }
    if job["method"] == "patchcore":
        module = Patchcore(coreset_sampling_ratio=job["coreset_ratio"], **common)
    elif job["method"] == "padim":
        module = Padim(n_features=job["n_features"], **common)
    else:
        raise ValueError(f"unknown method {job['method']}")
    net = module.model.feature_extractor.feature_extractor
    net.load_state_dict(load_file(job["weights"]), strict=True)
    return module


def probe_difference(module: Any, probe_file: str) -> float:
    """Max abs difference between anomalib's backbone features and ours on the probe input."""
    probe = load_file(probe_file)
    extractor = module.model.feature_extractor
    with torch.inference_mode():
        feats = extractor.eval()(probe["input"])
    return max(float((feats[layer] - probe[f"stage{layer}"]).abs().max()) for layer in extractor.layers)


def fit(module: Any, job: dict[str, Any]) -> None:
    """Fit ``module`` on ``<data>/train/good`` with anomalib's Engine (Folder datamodule, no validation)."""
    from anomalib.data import Folder
    from anomalib.engine import Engine

    datamodule = Folder(
        name=job["category"],
        root=job["data"],
        normal_dir="train/good",
        train_batch_size=job["batch_size"],
        eval_batch_size=job["batch_size"],
        num_workers=0,
        test_split_mode="none",
        val_split_mode="none",
    )
    engine = Engine(accelerator="cpu", devices=1, default_root_dir=job["out_dir"], logger=False)
    datamodule.setup()
    engine.fit(model=module, train_dataloaders=datamodule.train_dataloader())


def model_path(module: Any, image: np.ndarray) -> tuple[np.ndarray, float]:
    """Decoded RGB ``uint8`` image -> raw anomaly map ``[S, S]`` and image score, at batch 1."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div_(255.0)
    x = module.pre_processor.transform(x)
    out = module.model(x)
    return out.anomaly_map[0, 0].numpy(), float(out.pred_score.reshape(-1)[0])


def latency_ms(module: Any, files: list[str]) -> list[float]:
    """Batch-1 wall ms of ``model_path`` per image (decoded beforehand; one warm-up call)."""
    images = [read_rgb(f) for f in files]
    model_path(module, images[0])
    samples = []
    for image in images:
        start = time.perf_counter()
        model_path(module, image)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def score_test_set(module: Any, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly maps ``[N, S, S]`` float32 and image scores ``[N]`` of ``files``, one at a time."""
    maps, scores = [], []
    for f in files:
        amap, score = model_path(module, read_rgb(f))
        maps.append(amap.astype(np.float32))
        scores.append(score)
    return np.stack(maps), np.asarray(scores, dtype=np.float64)


def bank_rows(module: Any) -> int | None:
    """Rows of PatchCore's coreset memory bank (None for models without a tensor bank)."""
    bank = getattr(module.model, "memory_bank", None)
    return int(bank.shape[0]) if isinstance(bank, torch.Tensor) else None


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the result."""
    import anomalib
    import timm
    import torchvision

    return {
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
    }


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Fit, score the test set and time batch-1 inference; writes the outputs listed above."""
    torch.set_num_threads(job["threads"])
    out_dir = Path(job["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module = build_model(job)
    fit(module, job)
    fit_s = time.perf_counter() - start
    module.eval()
    feature_diff = probe_difference(module, job["probe"])
    with torch.inference_mode():
        maps, scores = score_test_set(module, job["test_files"])
        samples = latency_ms(module, job["latency_files"])
    np.save(out_dir / "maps.npy", maps)
    np.save(out_dir / "scores.npy", scores)
    result = {
        "method": job["method"],
        "fit_seconds": round(fit_s, 2),
        "latency_samples_ms": samples,
        "memory_bank_rows": bank_rows(module),
        "backbone_max_abs_diff_to_ours": feature_diff,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    job = json.loads(Path(sys.argv[1]).read_text())
    result = run(job)
    log.info("%s: fit %.1f s, latency p50 %.1f ms", job["method"], result["fit_seconds"],
             float(np.percentile(result["latency_samples_ms"], 50)))


if __name__ == "__main__":
    main()
