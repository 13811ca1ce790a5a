"""Image folders in the MVTec AD layout: good training images, test sets, labelled defects.

    <category>/train/good/*.png
    <category>/test/<good | defect type>/*.png
    <category>/ground_truth/<defect type>/<stem>_mask.png   (optional)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from model.runtime.imageio import ImageDecodeError, read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
GOOD = "good"


@dataclass
class TestSample:
    path: Path
    defect: str  # "good" or the defect type
    mask_path: Path | None  # None for good images or when there is no ground truth

    @property
    def label(self) -> int:
        return int(self.defect != GOOD)


def list_images(folder: Path | str) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_decodable(files: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """``files`` that decode, and ``"<name>: <reason>"`` for each that does not (every file is decoded once)."""
    good, bad = [], []
    for f in files:
        try:
            read_image(str(f))
        except ImageDecodeError as exc:
            bad.append(f"{f.name}: {str(exc).removeprefix(str(f) + ': ')}")
        else:
            good.append(f)
    return good, bad


def image_size(path: Path) -> list[int]:
    """Width and height of the image at ``path``, from its header."""
    with Image.open(path) as image:
        return list(image.size)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(files: Sequence[Path], hashes: Sequence[str] | None = None) -> str:
    """SHA-256 over the names and contents of ``files`` (``hashes``: their SHA-256, when known)."""
    h = hashlib.sha256()
    for i, f in enumerate(files):
        h.update(f.name.encode())
        h.update(bytes.fromhex(hashes[i] if hashes is not None else file_sha256(f)))
    return h.hexdigest()


def list_labelled(data: Path | str) -> tuple[list[TestSample], bool]:
    """Samples of ``<data>/test/*/`` and whether pixel ground truth exists (masks are then required)."""
    data = Path(data)
    test_dir, gt_dir = data / "test", data / "ground_truth"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"no test folder in {data}")
    has_masks = gt_dir.is_dir()
    samples = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for f in list_images(defect_dir):
            mask = None
            if defect != GOOD and has_masks:
                mask = gt_dir / defect / f"{f.stem}_mask.png"
                if not mask.is_file():
                    raise FileNotFoundError(f"missing ground-truth mask {mask}")
            samples.append(TestSample(f, defect, mask))
    return samples, has_masks


def check_both_classes(samples: Sequence[TestSample], where: Path | str) -> None:
    if not any(s.label for s in samples) or not any(not s.label for s in samples):
        raise ValueError(f"{where} needs both good and defective images")


def list_test_set(data: Path | str) -> tuple[list[TestSample], bool]:
    """Test samples of an MVTec-style folder (good and defective) and whether pixel ground truth exists."""
    samples, has_masks = list_labelled(data)
    check_both_classes(samples, Path(data) / "test")
    return samples, has_masks


def list_defects(data: Path | str) -> list[TestSample]:
    """The labelled defects of ``<data>/test/<type>/`` (with masks from ``<data>/ground_truth`` when present).

    A ``good`` folder there is ignored: good images for the fit come from ``train/good``.
    """
    defects = [s for s in list_labelled(data)[0] if s.label]
    if not defects:
        raise ValueError(f"no defect images in {Path(data) / 'test'}/<defect type>/")
    return defects


def check_defect_masks(defects: Sequence[TestSample]) -> None:
    """Refuse labelled defects whose mask cannot teach the fit where the defect is: a mask that
    does not decode, differs in size from its image, or marks nothing. Each error names the file."""
    for d in defects:
        if d.mask_path is None:
            continue
        mask = cv2.imread(str(d.mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{d.mask_path}: the mask does not decode")
        height, width = read_image(str(d.path)).shape[:2]
        if mask.shape != (height, width):
            raise ValueError(f"{d.mask_path}: the mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                             f"{d.path.name} is {width}x{height}")
        if not (mask > 127).any():
            raise ValueError(f"{d.mask_path}: the mask is empty; mark the defect, or remove the ground_truth "
                             f"folder to use the defects at image level only")


def read_mask(sample: TestSample, size: int) -> np.ndarray:
    """Ground truth ``[size, size]`` bool, resized by nearest neighbour (all False for good images)."""
    if sample.mask_path is None:
        return np.zeros((size, size), dtype=bool)
    m = cv2.imread(str(sample.mask_path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise ValueError(f"unreadable mask {sample.mask_path}")
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127
