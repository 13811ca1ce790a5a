"""CUDA accuracy: reduced precision against fp32, device preprocessing against OpenCV, CUDA against CPU.

    PYTHONPATH=. python3 benchmarks/gpu_accuracy.py --artifact A --data D --raw R --out F.json

* Per precision (fp32, bf16, fp16): ``evaluate`` on ``--data`` (image AUROC, pixel AUROC,
  AU-PRO) and, over its test images, the relative difference of image scores and maps
  against CUDA fp32.
* CUDA fp32 image scores against CPU ``evaluate`` of the same artifact and data.
* On the images of ``--raw`` (e.g. 900x900 originals): grey levels of the device resize
  against OpenCV's, and CUDA fp32 (device resize) scores and maps against CPU (OpenCV).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.jobs.dataset import list_images, list_test_set  # noqa: E402
from model.jobs.evaluate import evaluate  # noqa: E402
from model.runtime.execution import PRECISIONS  # noqa: E402
from model.runtime.imageio import preprocess, preprocess_on_device, read_image  # noqa: E402
from model.runtime.inspector import Inspector  # noqa: E402
from model.runtime.process import configure_device  # noqa: E402


def scores_and_maps(inspector: Inspector, images: list[np.ndarray], batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores ``[N]`` and final maps ``[N, S, S]`` of ``images``."""
    results = [r for i in range(0, len(images), batch) for r in inspector.inspect(images[i : i + batch])]
    return np.array([r.score for r in results]), np.stack([r.anomaly_map for r in results])


def relative_deltas(ref: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict:
    """Image-score ``|s - s_ref| / |s_ref|`` and map ``||m - m_ref|| / ||m_ref||`` per image: max and median."""
    score_rel = np.abs(other[0] - ref[0]) / np.abs(ref[0])
    diff = (other[1] - ref[1]).reshape(len(ref[1]), -1)
    map_rel = np.linalg.norm(diff, axis=1) / np.linalg.norm(ref[1].reshape(len(ref[1]), -1), axis=1)
    return {
        "score_rel_max": float(score_rel.max()), "score_rel_median": float(np.median(score_rel)),
        "map_rel_l2_max": float(map_rel.max()), "map_rel_l2_median": float(np.median(map_rel)),
    }


def resize_parity(inspector: Inspector, images: list[np.ndarray]) -> dict:
    """Device resize against OpenCV's on ``images``, in grey levels of the resized ``uint8`` image."""
    size, mean, std = inspector.config.image_size, inspector.mean, inspector.std
    host = preprocess(images, size, mean, std)
    device = preprocess_on_device(images, size, mean, std, inspector.device).cpu()
    levels = (host - device).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255.0
    return {"max_levels": float(levels.max()), "fraction_differing": float((levels > 0.01).float().mean())}


def sample_key(path: str) -> str:
    """``<defect>/<file>``: the same test image on any machine."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


def precision_block(inspector: Inspector, data: Path, images: list[np.ndarray],
                    ref: tuple[np.ndarray, np.ndarray] | None) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """Metrics of ``evaluate`` and deltas against ``ref`` (None for the reference itself)."""
    report = evaluate(inspector, data, batch_size=16)
    out = {k: report[k] for k in ("image_auroc", "pixel_auroc", "au_pro", "image_f1")}
    out["scores"] = {sample_key(r["file"]): r["score"] for r in report["images"]}
    sm = scores_and_maps(inspector, images)
    if ref is not None:
        out.update(relative_deltas(ref, sm))
    return out, sm


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--artifact", required=True)
    p.add_argument("--data", required=True, help="MVTec-style category (test/, ground_truth/)")
    p.add_argument("--raw", help="folder of full-size images for the resize and CPU-vs-CUDA checks")
    p.add_argument("--threads", type=int, default=16, help="torch CPU threads for the CPU reference")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--out")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    configure_device("cuda")  # TF32 off, as the server does at start-up
    inspector = Inspector.from_artifact(args.artifact, "cuda")
    images = [read_image(str(s.path)) for s in list_test_set(args.data)[0]]
    result: dict = {"device": torch.cuda.get_device_name(0), "precisions": {}}
    ref = None
    for precision in args.precisions.split(","):
        inspector.configure_execution(precision)
        block, sm = precision_block(inspector, Path(args.data), images, ref)
        ref = ref or sm
        result["precisions"][precision] = block
    fp32 = result["precisions"]["fp32"]["scores"]
    cpu_inspector = Inspector.from_artifact(args.artifact, "cpu")
    cpu = {sample_key(r["file"]): r["score"] for r in evaluate(cpu_inspector, args.data, batch_size=16)["images"]}
    result["cuda_fp32_vs_cpu_eval_score_rel_max"] = max(abs(fp32[k] - cpu[k]) / abs(cpu[k]) for k in cpu)
    if args.raw:
        raw = [read_image(str(f)) for f in list_images(args.raw)]
        inspector.configure_execution("fp32")
        result["raw"] = {"n": len(raw), "resize": resize_parity(inspector, raw),
                         "cuda_fp32_vs_cpu": relative_deltas(scores_and_maps(cpu_inspector, raw),
                                                             scores_and_maps(inspector, raw))}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    for precision, block in result["precisions"].items():
        print(precision, {k: v for k, v in block.items() if k != "scores"})
    print({k: v for k, v in result.items() if k not in ("precisions", "device")})


if __name__ == "__main__":
    main()
