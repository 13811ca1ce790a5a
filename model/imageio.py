"""Image decoding and preprocessing: the one path every image takes (fit, evaluate, server).

``decode_image`` turns encoded bytes into an RGB ``uint8`` array, checking the format
and the pixel count from the header before anything is decoded. ``preprocess`` turns
RGB arrays into the normalised model input ``[B, 3, S, S]``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000

Image.MAX_IMAGE_PIXELS = None  # our own limit below applies, before decoding


class ImageDecodeError(ValueError):
    """The bytes are not an acceptable image. ``code`` is the API error code."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to RGB ``uint8`` ``[H, W, 3]``.

    Gray, 16-bit, RGBA, palette and CMYK images are converted; EXIF orientation is
    applied; a multi-frame file yields its first frame.

    Raises ``ImageDecodeError`` with code ``invalid_image``, ``unsupported_format`` or
    ``image_too_large`` (the last from the header, before any pixel is decoded).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageDecodeError("not a decodable image") from exc
    if img.format not in ALLOWED_FORMATS:
        raise ImageDecodeError(f"format {img.format} not allowed; use PNG, JPEG, BMP or TIFF", "unsupported_format")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError("image has no pixels")
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height}, over the {max_pixels} pixel limit", "image_too_large")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError("corrupt or truncated image") from exc


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB ``uint8`` ``[H, W, 3]`` from any PIL mode."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageDecodeError(f"unsupported image mode {img.mode}", "unsupported_format")
    return np.ascontiguousarray(arr)


def read_image(path: str) -> np.ndarray:
    """Decode an image file through ``decode_image`` (the server's path)."""
    with open(path, "rb") as fh:
        return decode_image(fh.read())


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB ``[H, W, 3]`` to ``[size, size, 3]`` (no crop: the border is inspected)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def preprocess(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """RGB ``uint8`` arrays of any sizes -> normalised float tensor ``[B, 3, size, size]``."""
    batch = np.stack([resize_rgb(im, size) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s
