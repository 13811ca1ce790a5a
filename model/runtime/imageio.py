"""Image decoding and preprocessing: the one path every image takes (fit, evaluate, server).

``decode_image`` turns encoded bytes into an RGB ``uint8`` array, checking the format
and the pixel count from the header before anything is decoded. ``preprocess`` turns
RGB arrays into the normalised model input ``[B, 3, S, S]`` with OpenCV on the host;
``preprocess_on_device`` does the same on the model's device (CUDA), uploading only the
``uint8`` pixels and resizing with two matrix products that reproduce OpenCV's filters.

Importing this module changes no global state. PIL's own decompression-bomb guard
(``PIL.Image.MAX_IMAGE_PIXELS``) stays as it is unless a caller raises it explicitly at
start-up with ``allow_decoding_up_to``.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF"})
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000
STAGING_THREADS = min(8, os.cpu_count() or 1)  # host copies into pinned memory (numpy releases the GIL)
STAGING_MIN_THREADED_BYTES = 8_000_000  # below this one thread is faster (H100 host: 0.23 vs 0.42 ms at 2.4 MB)


class ImageDecodeError(ValueError):
    """The bytes are not an acceptable image. ``code`` is the API error code."""

    def __init__(self, message: str, code: str = "invalid_image") -> None:
        super().__init__(message)
        self.code = code


def allow_decoding_up_to(max_pixels: int) -> int | None:
    """Raise PIL's decompression-bomb limit so that images of up to ``max_pixels`` open.

    PIL warns at ``Image.open`` above ``PIL.Image.MAX_IMAGE_PIXELS`` (89,478,485 by default)
    and refuses above twice that with ``Image.DecompressionBombError``, which
    ``decode_image`` reports as ``image_too_large``. Below PIL's limit nothing is needed:
    ``decode_image`` applies its own ``max_pixels`` from the header. A caller configured
    for larger images calls this once at start-up; it sets ``MAX_IMAGE_PIXELS`` to
    ``max_pixels`` only when that is above the current limit, never lowers it and leaves
    it off (``None``) if something else turned it off. It changes a process-wide PIL
    setting, so it is an explicit start-up call, not something done at import or per
    request.

    The server calls it at start-up with ``settings.max_pixels`` (``service/app.py``).
    Returns PIL's limit now in force.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
    return Image.MAX_IMAGE_PIXELS


def _too_large(max_pixels: int) -> ImageDecodeError:
    """``image_too_large`` for an image PIL refused as a decompression bomb, naming the limit
    that applied: ``max_pixels``, or PIL's (twice ``MAX_IMAGE_PIXELS``) when that is lower
    because ``allow_decoding_up_to`` was not called for a ``max_pixels`` this large."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    limit = max_pixels if pil_limit is None else min(max_pixels, 2 * pil_limit)
    return ImageDecodeError(f"image is over the {limit} pixel limit", "image_too_large")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG/BMP/TIFF bytes to RGB ``uint8`` ``[H, W, 3]``.

    Gray, 16-bit, RGBA, palette and CMYK images are converted; EXIF orientation is
    applied; a multi-frame file yields its first frame.

    Raises ``ImageDecodeError`` with code ``invalid_image``, ``unsupported_format`` or
    ``image_too_large`` (the last from the header, before any pixel is decoded: by the
    check against ``max_pixels`` below, or by PIL's decompression-bomb guard at
    ``Image.open`` for images over twice ``PIL.Image.MAX_IMAGE_PIXELS``; callers allowing
    more than that call ``allow_decoding_up_to`` once at start-up).
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: our own check follows
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise _too_large(max_pixels) from exc
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
    except Image.DecompressionBombError as exc:  # e.g. a TIFF tile larger than the image
        raise _too_large(max_pixels) from exc
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
    """Decode an image file through ``decode_image`` (the server's path); errors name the file."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}", exc.code) from exc


def uses_area(height: int, width: int, size: int) -> bool:
    """Whether an ``[height, width]`` image is resized to ``size`` by area (else bilinear)."""
    return height >= size and width >= size


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB ``[H, W, 3]`` to ``[size, size, 3]`` (no crop: the border is inspected)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if uses_area(h, w, size) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def preprocess(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """RGB ``uint8`` arrays of any sizes -> normalised float tensor ``[B, 3, size, size]``."""
    batch = np.stack([resize_rgb(im, size) for im in images])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    return normalize(x, mean, std)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``x [B, 3, S, S]`` (values in [0, 1])."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def resize_weights(src: int, dst: int, area: bool) -> np.ndarray:
    """Resampling matrix ``[dst, src]`` (float64, rows sum to 1) of one axis, as OpenCV resizes.

    ``area``: each output pixel averages the input span it covers, partial pixels weighted
    by their covered fraction (``INTER_AREA`` when shrinking). Otherwise bilinear with
    half-pixel centres and clamped edges (``INTER_LINEAR``).
    """
    scale = src / dst
    out = np.arange(dst, dtype=np.float64)[:, None]
    if area:
        pixel = np.arange(src, dtype=np.float64)[None, :]
        covered = np.minimum((out + 1) * scale, pixel + 1) - np.maximum(out * scale, pixel)
        return np.clip(covered, 0.0, None) / scale
    centre = (out[:, 0] + 0.5) * scale - 0.5
    left = np.floor(centre).astype(np.int64)
    frac = centre - left
    frac[(left < 0) | (left >= src - 1)] = 0.0
    left = np.clip(left, 0, src - 1)
    right = np.minimum(left + 1, src - 1)
    weights = np.zeros((dst, src))
    rows = np.arange(dst)
    np.add.at(weights, (rows, left), 1.0 - frac)
    np.add.at(weights, (rows, right), frac)
    return weights


@lru_cache(maxsize=64)
def _axis_weights(src: int, dst: int, area: bool, device: torch.device) -> torch.Tensor:
    """``resize_weights`` as a float32 tensor on ``device``, cached per image size."""
    return torch.from_numpy(resize_weights(src, dst, area)).float().to(device)


def resize_on_device(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """``uint8`` images ``[B, H, W, 3]`` -> float grey levels ``[B, 3, size, size]`` on their device.

    Two matrix products (columns, then rows) with OpenCV's weights, then rounding to whole
    grey levels as OpenCV's ``uint8`` output does: equal to ``resize_rgb`` except for rare
    off-by-one levels (float summation order; OpenCV's fixed-point bilinear arithmetic).
    Needs full-precision float32 matmuls (TF32 off), which ``Inspector`` ensures.
    """
    b, h, w, _ = pixels.shape
    area = uses_area(h, w, size)
    x = torch.empty((b, 3, h, w), dtype=torch.float32, device=pixels.device)
    x.copy_(pixels.permute(0, 3, 1, 2))
    cols = torch.matmul(x, _axis_weights(w, size, area, pixels.device).T)  # [B, 3, H, S], one GEMM
    wy = _axis_weights(h, size, area, pixels.device).expand(b * 3, size, h)  # shared, not copied
    rows = torch.bmm(wy, cols.view(b * 3, h, size))  # [B*3, S, S]
    return rows.view(b, 3, size, size).add_(0.5).floor_()


@cache
def _staging_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(STAGING_THREADS, thread_name_prefix="staging")


def stage(images: Sequence[np.ndarray], out: np.ndarray) -> None:
    """Copy same-shape images into ``out [B, H, W, 3]``, in row blocks on ``STAGING_THREADS`` threads
    when large (one thread's memcpy moved only ~6-9 GB/s on the H100 host: 9-13 ms for 32 images
    of 900x900, 1.8 ms threaded)."""
    if out.nbytes < STAGING_MIN_THREADED_BYTES:
        np.stack(images, out=out)
        return
    h = images[0].shape[0]
    bounds = np.linspace(0, h, max(1, STAGING_THREADS // len(images)) + 1).astype(int)
    blocks = [(i, a, b) for i in range(len(images)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    list(_staging_pool().map(lambda blk: np.copyto(out[blk[0], blk[1]:blk[2]], images[blk[0]][blk[1]:blk[2]]),
                             blocks))


def upload(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-shape RGB ``uint8`` arrays -> ``[B, H, W, 3]`` on ``device``, through pinned memory on CUDA."""
    h, w, _ = images[0].shape
    staging = torch.empty((len(images), h, w, 3), dtype=torch.uint8, pin_memory=device.type == "cuda")
    stage(images, staging.numpy())
    return staging.to(device, non_blocking=True)


def preprocess_on_device(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """``preprocess`` computed on ``device``: RGB ``uint8`` arrays -> ``[B, 3, size, size]`` there.

    Images are grouped by shape; each group is uploaded in one copy and resized as a batch.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    if len(groups) == 1:
        x = resize_on_device(upload(images, device), size)
    else:
        x = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=device)
        for idx in groups.values():
            x[idx] = resize_on_device(upload([images[i] for i in idx], device), size)
    return normalize(x.div_(255.0), mean, std)
