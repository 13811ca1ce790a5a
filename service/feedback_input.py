"""Reading a confirmation (``POST /categories/<c>/feedback``): which images, what they are, where.

A multipart form: ``label`` (``good``: a false alarm, or ``defect``), then either
``request_id`` (a recent inspection; ``index`` picks one image of a batch, default all) or
one or more ``file`` uploads; for a defect optionally ``defect_type`` (a short name), a
``box`` (``x0,y0,x1,y1`` in the image's pixels) or one ``mask`` upload (non-zero where the
defect is, the image's size). Every image must have the size the category was trained on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np
from starlette.requests import Request

from model.serving import ImageDecodeError, Manifest, decode_image, resize_rgb, validate_category
from service.errors import ApiError
from service.recent import RecentInspections
from service.uploads import DECODE_STATUS, MAX_FILENAME, Upload, read_part

MAX_FEEDBACK_FILES = 16
TEXT_FIELDS = ("label", "request_id", "index", "defect_type", "box")


@dataclass
class Confirmed:
    """One image to confirm, at the model input size, with its mask (a defect's, when marked)."""

    image: np.ndarray
    mask: np.ndarray | None
    request_id: str | None
    filename: str | None


@dataclass
class FeedbackForm:
    label: str
    defect_type: str | None
    items: list[Confirmed]


async def read_feedback(request: Request, manifest: Manifest, recent: RecentInspections,
                        max_pixels: int) -> FeedbackForm:
    """The confirmation in ``request``; ``ApiError`` (400/404/409/413/415/422) when it cannot be used."""
    async with request.form(max_files=MAX_FEEDBACK_FILES + 1, max_fields=len(TEXT_FIELDS)) as form:
        text = {k: form.get(k) for k in TEXT_FIELDS}
        if any(v is not None and not isinstance(v, str) for v in text.values()):
            raise ApiError(422, "validation_error", f"{', '.join(TEXT_FIELDS)} are text fields, not files")
        files = [await read_part("file", p) for p in form.getlist("file")]
        mask_parts = form.getlist("mask")
        mask_upload = await read_part("mask", mask_parts[0]) if mask_parts else None
    return await asyncio.to_thread(_prepare, text, files, mask_upload, manifest, recent, max_pixels)


def _prepare(text: dict, files: list[Upload], mask_upload: Upload | None, manifest: Manifest,
             recent: RecentInspections, max_pixels: int) -> FeedbackForm:
    """Blocking (decoding): the form's fields checked and its images at the model input size."""
    label = text["label"]
    if label not in ("good", "defect"):
        raise ApiError(422, "invalid_label", "label must be 'good' (a false alarm) or 'defect'")
    defect_type = _defect_type(text["defect_type"]) if label == "defect" else None
    box = _box(text["box"]) if text["box"] else None
    if label == "good" and (box is not None or mask_upload is not None):
        raise ApiError(422, "validation_error", "a box or mask marks a defect; a good part has none")
    if (text["request_id"] is None) == (not files):
        raise ApiError(422, "validation_error", "give either request_id (a recent inspection) or file uploads")
    if len(files) > MAX_FEEDBACK_FILES:
        raise ApiError(413, "too_many_images", f"more than {MAX_FEEDBACK_FILES} images in one confirmation")
    if mask_upload is not None and (len(files) != 1 or box is not None):
        raise ApiError(422, "validation_error", "a mask goes with exactly one uploaded file and no box")
    size = manifest.config.image_size
    expected = tuple(manifest.training.image_size) if manifest.training.image_size else None
    if text["request_id"] is not None:
        sources = _from_recent(recent, text["request_id"], text["index"])
    else:
        sources = [(_decode(f.data, f.filename, max_pixels), f.filename[:MAX_FILENAME] if f.filename else None)
                   for f in files]
    items = []
    for original_or_entry, filename in sources:
        image, width_height = original_or_entry
        if expected is not None and width_height != expected:
            raise ApiError(422, "image_size_mismatch", f"{filename or 'the image'} is {width_height[0]}x"
                           f"{width_height[1]} but this category was trained on {expected[0]}x{expected[1]} "
                           "images: confirm images from the same camera and setup")
        mask = None
        if box is not None:
            mask = _box_mask(box, width_height, size)
        elif mask_upload is not None:
            mask = _mask(mask_upload.data, width_height, size, max_pixels)
        items.append(Confirmed(image if image.shape[:2] == (size, size) else resize_rgb(image, size), mask,
                               text["request_id"], filename))
    return FeedbackForm(label, defect_type, items)


def _from_recent(recent: RecentInspections, request_id: str, index: str | None):
    entries = recent.of_request(request_id)
    if not entries:
        raise ApiError(404, "unknown_request", f"no recent inspection {request_id!r} is kept for this category "
                       "(only the newest are; upload the image instead)")
    if index is not None:
        try:
            entries = [entries[int(index)]]
        except (ValueError, IndexError) as exc:
            raise ApiError(422, "validation_error", f"index {index!r} is not an image of that request "
                           f"(it had {len(entries)})") from exc
    if any(e.model_input is None for e in entries):
        raise ApiError(404, "unknown_request", f"the image of {request_id!r} is no longer kept; upload it instead")
    return [((e.model_input, e.size), e.filename) for e in entries]


def _decode(data: bytes, filename: str | None, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        image = decode_image(data, max_pixels)
    except ImageDecodeError as exc:
        raise ApiError(DECODE_STATUS.get(exc.code, 400), exc.code, f"{filename or 'upload'}: {exc}"[:300]) from exc
    return image, (image.shape[1], image.shape[0])


def _defect_type(value: str | None) -> str:
    if value is None or value == "":
        return "confirmed"
    try:
        return validate_category(value)  # the same safe alphabet: it becomes a folder name
    except ValueError as exc:
        raise ApiError(422, "validation_error", f"defect_type: {exc}"[:200]) from exc


def _box(value: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in value.split(","))
    except ValueError as exc:
        raise ApiError(422, "invalid_box", "box must be x0,y0,x1,y1 in the image's pixels") from exc
    if not (x1 > x0 and y1 > y0) or min(x0, y0) < 0:
        raise ApiError(422, "invalid_box", "box must have x1 > x0 >= 0 and y1 > y0 >= 0")
    return x0, y0, x1, y1


def _box_mask(box, width_height: tuple[int, int], size: int) -> np.ndarray:
    width, height = width_height
    x0, y0, x1, y1 = box
    if x1 > width or y1 > height:
        raise ApiError(422, "invalid_box", f"box {box} lies outside the {width}x{height} image")
    mask = np.zeros((size, size), bool)
    sx, sy = size / width, size / height
    mask[int(y0 * sy): max(int(y0 * sy) + 1, round(y1 * sy)), int(x0 * sx): max(int(x0 * sx) + 1, round(x1 * sx))] = True
    return mask


def _mask(data: bytes, width_height: tuple[int, int], size: int, max_pixels: int) -> np.ndarray:
    mask, got = _decode(data, "mask", max_pixels)
    if got != width_height:
        raise ApiError(422, "image_size_mismatch", f"the mask is {got[0]}x{got[1]} but its image is "
                       f"{width_height[0]}x{width_height[1]}")
    marked = cv2.resize((mask.max(axis=2) > 127).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    if not marked.any():
        raise ApiError(422, "empty_mask", "the mask marks nothing; mark the defect or send no mask")
    return marked.astype(bool)
