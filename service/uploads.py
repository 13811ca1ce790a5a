"""Reading the images of an inspect request: multipart ``file`` / ``files``, or a raw ``image/*`` body.

The body size limit is enforced beneath this, by ``BodyLimitMiddleware``, while the
body streams in. Decoding goes through ``model.serving.decode_image``, the path
``evaluate`` uses, so served scores equal evaluated ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request

from model.serving import ImageDecodeError, decode_image
from service.errors import ApiError, PayloadTooLarge

RAW_TYPES = ("image/", "application/octet-stream")
MAX_FORM_FIELDS = 8  # non-file multipart parts
MAX_FILENAME = 255
CLIENT_CLOSED = 499  # nginx's code: the client went away; nobody reads the answer
DECODE_STATUS = {"invalid_image": 400, "unsupported_format": 415, "image_too_large": 413}


@dataclass
class Upload:
    data: bytes
    filename: str | None
    field: str  # "file", "files" or "body"


@dataclass
class Uploads:
    items: list[Upload]
    batch: bool  # answer with BatchResult (the ``files`` field, or several ``file`` parts)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_uploads(request: Request, max_images: int) -> Uploads:
    """The request's encoded images. Raises ``ApiError`` (413/415/422/400) for unusable bodies,
    499 ``client_closed_request`` when the client goes away mid-body."""
    try:
        return await _read_uploads(request, max_images)
    except ClientDisconnect as exc:
        raise ApiError(CLIENT_CLOSED, "client_closed_request", "client disconnected while sending") from exc


async def _read_uploads(request: Request, max_images: int) -> Uploads:
    media = _media_type(request)
    if media == "multipart/form-data":
        return await _read_multipart(request, max_images)
    body = await _read_body(request)
    if not body:
        raise ApiError(422, "empty_body", "no image: send multipart 'file' / 'files' or a raw image/* body")
    if not media.startswith(RAW_TYPES):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {media or '(none)'} not accepted: use multipart/form-data or image/*")
    return Uploads([Upload(body, None, "body")], batch=False)


async def _read_body(request: Request) -> bytes:
    chunks = [chunk async for chunk in request.stream()]
    return b"".join(chunks)


async def _read_multipart(request: Request, max_images: int) -> Uploads:
    try:
        async with request.form(max_files=max_images, max_fields=MAX_FORM_FIELDS) as form:
            singles, many = form.getlist("file"), form.getlist("files")
            parts = [("file", p) for p in singles] + [("files", p) for p in many]
            if not parts:
                raise ApiError(422, "missing_file", "multipart body has no 'file' or 'files' part")
            if len(parts) > max_images:
                raise too_many_images(max_images)
            items = [await read_part(name, part) for name, part in parts]
    except PayloadTooLarge:
        raise
    except StarletteHTTPException as exc:  # python-multipart limits and syntax errors
        detail = str(exc.detail)
        if "Too many files" in detail:
            raise too_many_images(max_images) from exc
        if "Too many fields" in detail:
            raise ApiError(413, "too_many_parts", f"more than {MAX_FORM_FIELDS} non-file form fields") from exc
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {detail}"[:300]) from exc
    return Uploads(items, batch=bool(many) or len(singles) > 1)


def too_many_images(max_images: int) -> ApiError:
    """413 for a request with more than ``max_images`` images (multipart parts or tensor images)."""
    return ApiError(413, "too_many_images", f"more than {max_images} images in one request")


async def read_part(name: str, part: UploadFile | str) -> Upload:
    if not isinstance(part, UploadFile):
        raise ApiError(422, "missing_file", f"form field '{name}' must be a file upload, not text")
    data = await part.read()
    if not data:
        raise ApiError(422, "empty_file", f"the '{name}' upload {part.filename or ''} is empty".replace("  ", " "))
    filename = part.filename[:MAX_FILENAME] if part.filename else None
    return Upload(data, filename, name)


def decode_all(uploads: list[Upload], max_pixels: int, max_total_pixels: int) -> tuple[list[np.ndarray], list[float]]:
    """Blocking: decode every upload to RGB ``uint8 [H, W, 3]``; returns images and per-image ms.

    Each image is held to ``max_pixels`` and all of them together to ``max_total_pixels``,
    both checked from the image header before its pixels are decoded. Raises ``ApiError``:
    400 ``invalid_image``, 415 ``unsupported_format``, 413 ``image_too_large``.
    """
    images, times = [], []
    left = max_total_pixels
    for index, upload in enumerate(uploads):
        started = time.perf_counter()
        where = "" if len(uploads) == 1 else f"image {index} ({upload.filename or upload.field}): "
        try:
            image = decode_image(upload.data, min(max_pixels, left))
        except ImageDecodeError as exc:
            message = str(exc)
            if exc.code == "image_too_large" and left < max_pixels:
                message = f"the request's images total over {max_total_pixels} pixels"
            raise ApiError(DECODE_STATUS.get(exc.code, 400), exc.code, f"{where}{message}") from exc
        left -= image.shape[0] * image.shape[1]
        images.append(image)
        times.append((time.perf_counter() - started) * 1000.0)
    return images, times
