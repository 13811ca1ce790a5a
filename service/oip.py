"""KServe Open Inference Protocol (v2) tensors: the JSON schema, images in, verdict tensors out.

The request and response bodies follow the protocol's REST schema
(``$inference_request``: ``id``, ``parameters``, ``inputs``, ``outputs``; each tensor with
``name``, ``shape``, ``datatype``, ``data`` in row-major order). One input, ``image``:

- ``UINT8`` with shape ``[H, W, 3]`` or ``[N, H, W, 3]``: RGB pixels;
- ``BYTES`` with shape ``[N]``: each element a base64 string of an encoded image (PNG,
  JPEG, BMP, TIFF), decoded by the same code as ``POST /inspect``.

Outputs (all by default, or those named in ``outputs``): ``score``, ``normalized_score``,
``threshold`` (FP64 ``[N]``), ``is_anomalous`` (BOOL ``[N]``), ``map`` (FP32 ``[N, H, W]``, the
final anomaly map at the input size) and ``mask`` (BOOL ``[N, H, W]``). Bad tensors raise
``ApiError`` 400 ``invalid_input`` (or 413 for too many images or pixels) before any inference.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from model.serving import Verdict
from service.errors import ApiError
from service.settings import Settings
from service.uploads import Upload, decode_all, too_many_images

INPUT_NAME = "image"
OUTPUTS: dict[str, str] = {"score": "FP64", "normalized_score": "FP64", "threshold": "FP64",
                           "is_anomalous": "BOOL", "map": "FP32", "mask": "BOOL"}
PER_PIXEL = ("map", "mask")


class Tensor(BaseModel):
    """``$request_input`` / ``$response_output``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=16)
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    """``$request_output``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """``$inference_request``; ``parameters.threshold`` overrides the image threshold."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=128)
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(None, max_length=len(OUTPUTS))


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def requested_outputs(request: InferenceRequest) -> list[str]:
    names = [o.name for o in request.outputs] if request.outputs else list(OUTPUTS)
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise bad(f"unknown outputs {unknown}: choose from {list(OUTPUTS)}")
    return list(dict.fromkeys(names))


def threshold_override(request: InferenceRequest) -> float | None:
    value = (request.parameters or {}).get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise bad("parameters.threshold must be a finite number > 0")
    return float(value)


def pixel_images(tensor: Tensor, settings: Settings) -> list[np.ndarray]:
    """A ``UINT8 [H, W, 3]`` or ``[N, H, W, 3]`` tensor -> RGB ``uint8`` images ``[H, W, 3]``."""
    shape = tensor.shape[1:] if len(tensor.shape) == 4 else tensor.shape
    count = tensor.shape[0] if len(tensor.shape) == 4 else 1
    if len(shape) != 3 or shape[2] != 3 or min(tensor.shape) < 1:
        raise bad(f"UINT8 input needs shape [H, W, 3] or [N, H, W, 3] with positive sizes, got {tensor.shape}")
    _check_counts(count, shape[0] * shape[1], settings)
    try:
        data = np.asarray(tensor.data)
    except ValueError as exc:  # ragged nesting
        raise bad(f"input data is not a rectangular array: {exc}") from None
    if data.size != count * shape[0] * shape[1] * 3:
        raise bad(f"input data has {data.size} values, shape {tensor.shape} needs {count * math.prod(shape)}")
    if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
        raise bad("UINT8 input data must be integers in [0, 255]")
    pixels = data.astype(np.uint8).reshape(count, *shape)
    return [np.ascontiguousarray(image) for image in pixels]


def byte_uploads(tensor: Tensor, settings: Settings) -> list[Upload]:
    """A ``BYTES [N]`` tensor of base64 strings -> encoded images (decoded like ``/inspect`` uploads)."""
    if len(tensor.shape) != 1 or tensor.shape[0] != len(tensor.data) or not tensor.data:
        raise bad(f"BYTES input needs shape [N] with N base64 strings, got shape {tensor.shape} "
                  f"and {len(tensor.data)} elements")
    _check_counts(len(tensor.data), 0, settings)
    uploads = []
    for index, item in enumerate(tensor.data):
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            data = base64.b64decode(item, validate=True)
        except (ValueError, binascii.Error):
            raise bad(f"BYTES element {index} is not a base64 string") from None
        if not data:
            raise bad(f"BYTES element {index} is empty")
        uploads.append(Upload(data, f"image{index}", "inputs"))
    return uploads


def _check_counts(count: int, pixels_each: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise too_many_images(settings.max_images_per_request)
    if pixels_each > settings.max_pixels or count * pixels_each > settings.max_request_pixels:
        raise ApiError(413, "image_too_large", "the input tensor has more pixels than the server accepts")


def input_count(tensor: Tensor, settings: Settings) -> int:
    """How many images the input tensor holds, from its name, datatype and shape alone (admitted
    before any pixel is read); 400 ``invalid_input`` or 413 from the counts."""
    if tensor.name != INPUT_NAME:
        raise bad(f"unknown input {tensor.name!r}: the model's input is {INPUT_NAME!r}")
    if tensor.datatype not in ("UINT8", "BYTES"):
        raise bad(f"input datatype {tensor.datatype!r} not accepted: UINT8 pixels or BYTES encoded images")
    count = len(tensor.data) if tensor.datatype == "BYTES" else tensor.shape[0] if len(tensor.shape) == 4 else 1
    _check_counts(count, 0, settings)
    return count


def images_of(tensor: Tensor, settings: Settings) -> tuple[list[np.ndarray], list[float]]:
    """Blocking: the input tensor's RGB images (BYTES decoded by the ``/inspect`` decoder) and the
    ms each took."""
    if tensor.datatype == "BYTES":
        return decode_all(byte_uploads(tensor, settings), settings.max_pixels, settings.max_request_pixels)
    started = time.perf_counter()
    images = pixel_images(tensor, settings)
    return images, [(time.perf_counter() - started) * 1000.0 / len(images)] * len(images)


def image_outputs(names: list[str], verdict: Verdict) -> dict[str, Any]:
    """Blocking: one image's values of the requested outputs (the map and mask as flat lists)."""
    values = {
        "score": lambda: verdict.score,
        "normalized_score": lambda: verdict.normalized_score,
        "threshold": lambda: verdict.threshold,
        "is_anomalous": lambda: verdict.is_anomalous,
        "map": lambda: verdict.anomaly_map.astype(np.float32).ravel().tolist(),
        "mask": lambda: verdict.mask.ravel().tolist(),
    }
    return {name: values[name]() for name in names}


def output_tensors(names: list[str], verdicts: list[Verdict], values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requested output tensors (``$response_output``) of ``verdicts`` from each one's
    ``image_outputs``."""
    if any(n in PER_PIXEL for n in names) and len({v.anomaly_map.shape for v in verdicts}) > 1:
        raise bad("images of different sizes cannot share a map or mask tensor: request score outputs only, "
                  "or send one image per request")
    count = len(verdicts)
    out = []
    for name in names:
        if name in PER_PIXEL:
            shape, data = [count, verdicts[0].height, verdicts[0].width], [x for v in values for x in v[name]]
        else:
            shape, data = [count], [v[name] for v in values]
        out.append({"name": name, "datatype": OUTPUTS[name], "shape": shape, "data": data})
    return out


def metadata_tensors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``$metadata_tensor`` lists of the model metadata: inputs, outputs (-1: variable size)."""
    inputs = [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, -1, -1, 3]}]
    outputs = [{"name": n, "datatype": d, "shape": [-1, -1, -1] if n in PER_PIXEL else [-1]}
               for n, d in OUTPUTS.items()]
    return inputs, outputs
