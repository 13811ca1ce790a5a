"""Security tests over the DESIGN.md bad-input table: every client mistake gets its status,
its code and the error shape; never a 500, never a stack trace."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

BODY_LIMIT = 300_000
MAX_IMAGES = 4
MAX_REQUEST_PIXELS = 20_000  # three 96x64 images (18 432 px) pass, four do not
RNG = np.random.default_rng(7)
RGB = Image.fromarray(RNG.integers(0, 256, (64, 96, 3), dtype=np.uint8))  # 96 wide, 64 high


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """This module's torch work (fits, library scoring) runs on one thread (see conftest)."""


@pytest.fixture(scope="module")
def client(one_torch_thread, request):
    # Looked up here, not as an argument, so that a first fit runs with one thread too.
    settings = Settings(artifacts=request.getfixturevalue("tiny_artifacts"), torch_threads=1, max_body_bytes=BODY_LIMIT,
                        max_images_per_request=MAX_IMAGES, max_request_pixels=MAX_REQUEST_PIXELS)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:
        yield c


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_with_header_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR claims ``width x height`` (CRC patched): a decompression bomb header."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the decoded image is 64 wide, 96 high
    return encode(RGB, "JPEG", exif=exif)


def sixteen_bit_png() -> bytes:
    return encode(Image.fromarray(RNG.integers(0, 65536, (64, 96)).astype(np.uint16)), "PNG")


PNG = encode(RGB, "PNG")
JPEG = encode(RGB, "JPEG")


def assert_error(r, status: int | tuple[int, ...], code: str | tuple[str, ...] | None = None) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code", "request_id"}, body
    assert body["request_id"] == r.headers["X-Request-ID"]
    if code is not None:
        assert body["code"] in (code if isinstance(code, tuple) else (code,)), body
    assert "Traceback" not in r.text
    return body


def multipart(data: bytes, name: str = "file", filename: str = "part", ctype: str = "application/octet-stream"):
    return {"files": {name: (filename, data, ctype)}}


# -- images that are accepted (converted) -------------------------------------------------------

ACCEPTED = {
    "png": (PNG, (96, 64)),
    "jpeg": (JPEG, (96, 64)),
    "bmp": (encode(RGB, "BMP"), (96, 64)),
    "tiff": (encode(RGB, "TIFF"), (96, 64)),
    "gray": (encode(RGB.convert("L"), "PNG"), (96, 64)),
    "gray_jpeg": (encode(RGB.convert("L"), "JPEG"), (96, 64)),
    "16_bit_png": (sixteen_bit_png(), (96, 64)),
    "rgba": (encode(RGB.convert("RGBA"), "PNG"), (96, 64)),
    "gray_alpha": (encode(RGB.convert("LA"), "PNG"), (96, 64)),
    "palette": (encode(RGB.convert("P"), "PNG"), (96, 64)),
    "palette_transparency": (encode(RGB.convert("P"), "PNG", transparency=0), (96, 64)),
    "bilevel": (encode(RGB.convert("1"), "PNG"), (96, 64)),
    "cmyk_jpeg": (encode(RGB.convert("CMYK"), "JPEG"), (96, 64)),
    "exif_rotated_jpeg": (exif_rotated_jpeg(), (64, 96)),
    "1x1": (encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), (1, 1)),
    "1x300_strip": (encode(Image.new("L", (300, 1)), "PNG"), (300, 1)),
    "multi_frame_tiff": (encode(RGB, "TIFF", save_all=True, append_images=[RGB.convert("L")]), (96, 64)),
    "float_tiff": (encode(Image.fromarray(RNG.random((64, 96), dtype=np.float32)), "TIFF"), (96, 64)),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_accepted_image_kinds(client, name):
    data, (width, height) = ACCEPTED[name]
    r = client.post("/inspect/alpha", **multipart(data), params={"outputs": "mask"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (width, height)
    assert body["mask"] and np.isfinite(body["score"])


# -- rejected images ------------------------------------------------------------------------------

REJECTED: dict[str, tuple[bytes, int, str]] = {
    "random_bytes": (RNG.integers(0, 256, 4000, dtype=np.uint8).tobytes(), 400, "invalid_image"),
    "text_as_image": (b"hello, this is not an image\n" * 10, 400, "invalid_image"),
    "truncated_png": (PNG[: len(PNG) // 2], 400, "invalid_image"),
    "truncated_jpeg": (JPEG[: len(JPEG) // 2], 400, "invalid_image"),
    "corrupt_png": (PNG[:40] + bytes(200) + PNG[240:], 400, "invalid_image"),
    "png_signature_only": (PNG[:8], 400, "invalid_image"),
    "jpeg_marker_only": (b"\xff\xd8\xff\xe0" + bytes(16), 400, "invalid_image"),
    "gif": (encode(RGB.convert("P"), "GIF"), 415, "unsupported_format"),
    "multi_frame_gif": (encode(RGB.convert("P"), "GIF", save_all=True, append_images=[RGB.convert("P")]), 415,
                        "unsupported_format"),
    "webp": (encode(RGB, "WEBP"), 415, "unsupported_format"),
    "ico": (encode(RGB, "ICO"), 415, "unsupported_format"),
    "decompression_bomb_png": (png_with_header_size(20000, 20000), 413, "image_too_large"),
    "bomb_just_over_limit": (png_with_header_size(8001, 8000), 413, "image_too_large"),
}


@pytest.mark.parametrize("name", list(REJECTED))
def test_rejected_images_multipart(client, name):
    data, status, code = REJECTED[name]
    assert_error(client.post("/inspect/alpha", **multipart(data)), status, code)


@pytest.mark.parametrize("name", ["random_bytes", "truncated_jpeg", "gif", "decompression_bomb_png"])
def test_rejected_images_raw_body(client, name):
    data, status, code = REJECTED[name]
    r = client.post("/inspect/alpha", content=data, headers={"Content-Type": "image/png"})
    assert_error(r, status, code)


def test_total_pixels_per_request_are_capped(client):
    three = [("files", (f"{i}.png", PNG, "image/png")) for i in range(3)]
    assert client.post("/inspect/alpha", files=three, params={"outputs": "none"}).status_code == 200
    body = assert_error(client.post("/inspect/alpha", files=three + [("files", ("3.png", PNG, "image/png"))]),
                        413, "image_too_large")
    assert "image 3 (3.png)" in body["error"] and str(MAX_REQUEST_PIXELS) in body["error"]


def test_bad_image_among_several_names_its_index(client):
    files = [("files", ("good.png", PNG, "image/png")), ("files", ("bad.png", b"garbage", "image/png"))]
    body = assert_error(client.post("/inspect/alpha", files=files), 400, "invalid_image")
    assert "image 1 (bad.png)" in body["error"]


# -- bodies and fields ---------------------------------------------------------------------------------


def _chunks(total: int, size: int = 64_000):
    sent = 0
    while sent < total:
        yield b"\0" * min(size, total - sent)
        sent += size


BODIES: dict[str, tuple[Callable[[], dict], int, str]] = {
    "oversize_content_length_raw": (
        lambda: {"content": b"\0" * (BODY_LIMIT + 1), "headers": {"Content-Type": "image/png"}},
        413, "payload_too_large"),
    "oversize_content_length_multipart": (lambda: multipart(b"\0" * BODY_LIMIT), 413, "payload_too_large"),
    "oversize_chunked_stream": (
        lambda: {"content": _chunks(BODY_LIMIT * 3), "headers": {"Content-Type": "image/png"}},
        413, "payload_too_large"),
    "empty_body": (lambda: {}, 422, "empty_body"),
    "empty_raw_image": (lambda: {"content": b"", "headers": {"Content-Type": "image/png"}}, 422, "empty_body"),
    "empty_file": (lambda: multipart(b""), 422, "empty_file"),
    "wrong_field": (lambda: multipart(PNG, name="image"), 422, "missing_file"),
    "text_in_file_field": (
        lambda: {"data": {"file": "not a file"}, "files": {"other": ("x", b"x", "text/plain")}}, 422, "missing_file"),
    "no_file_only_text": (
        lambda: {"content": b"--b\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--b--\r\n",
                 "headers": {"Content-Type": "multipart/form-data; boundary=b"}}, 422, "missing_file"),
    "urlencoded_form": (lambda: {"data": {"file": "abc"}}, 415, "unsupported_media_type"),
    "json_body": (lambda: {"json": {"image": "aGVsbG8="}}, 415, "unsupported_media_type"),
    "text_plain": (lambda: {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
                   "unsupported_media_type"),
    "no_content_type": (lambda: {"content": PNG, "headers": {"Content-Type": ""}}, 415, "unsupported_media_type"),
    "multipart_without_boundary": (
        lambda: {"content": b"abc", "headers": {"Content-Type": "multipart/form-data"}}, 400, "invalid_multipart"),
    "multipart_garbage": (
        lambda: {"content": b"--zz\r\nnonsense", "headers": {"Content-Type": "multipart/form-data; boundary=zz"}},
        (400, 422), ("invalid_multipart", "missing_file")),
    "too_many_images": (
        lambda: {"files": [("files", (f"{i}.png", ACCEPTED["1x1"][0], "image/png")) for i in range(MAX_IMAGES + 1)]},
        413, "too_many_images"),
    "too_many_images_file_field": (
        lambda: {"files": [("file", (f"{i}.png", ACCEPTED["1x1"][0], "image/png")) for i in range(MAX_IMAGES + 1)]},
        413, "too_many_images"),
    "too_many_text_parts": (
        lambda: {"data": {f"f{i}": "x" for i in range(20)}, "files": {"file": ("a.png", PNG, "image/png")}},
        413, "too_many_parts"),
    "invalid_content_length": (
        lambda: {"content": PNG, "headers": {"Content-Type": "image/png", "Content-Length": "12abc"}},
        400, "bad_request"),
}


@pytest.mark.parametrize("name", list(BODIES))
def test_bad_bodies(client, name):
    make, status, code = BODIES[name]
    assert_error(client.post("/inspect/alpha", **make()), status, code)


def test_body_limit_applies_before_auth_and_category_lookup(client):
    r = client.post("/inspect/no-such", content=b"\0" * (BODY_LIMIT + 1), headers={"Content-Type": "image/png"})
    assert_error(r, 413, "payload_too_large")


# -- query parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"threshold": "0"}, {"threshold": "-1"}, {"threshold": "nan"}, {"threshold": "inf"}, {"threshold": "-inf"},
    {"threshold": "abc"}, {"threshold": ""}, {"outputs": "bogus"}, {"outputs": "none,mask"}, {"outputs": "x" * 100},
])
def test_bad_query_parameters(client, params):
    r = client.post("/inspect/alpha", **multipart(PNG), params=params)
    assert_error(r, 422, ("validation_error", "invalid_parameter"))


# -- category names ---------------------------------------------------------------------------------

CATEGORY_PATHS = [
    "/inspect/../x",
    "/inspect/..%2Fx",
    "/inspect/a%2Fb",
    "/inspect/a/b",
    "/inspect/%2e%2e",
    "/inspect/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/inspect/..",
    "/inspect/.",
    "/inspect/",
    "/inspect",
    "/inspect/" + "a" * 300,
    "/inspect/ünïcødé",
    "/inspect/%00",
    "/inspect/alpha%00",
    "/inspect/.hidden",
    "/inspect/-dash",
    "/inspect/a b",
    "/inspect/%252e%252e",
]


@pytest.mark.parametrize("path", CATEGORY_PATHS)
def test_bad_category_names_inspect(client, path):
    assert_error(client.post(path, **multipart(PNG)), (404, 405, 422))


@pytest.mark.parametrize("path", [p.replace("/inspect", "/categories", 1) for p in CATEGORY_PATHS])
def test_bad_category_names_detail_and_reload(client, path):
    if path == "/categories/..":  # the client normalises it to /: the page, never a category's data
        assert client.get(path).headers["content-type"].startswith("text/html")
    elif path not in ("/categories", "/categories/", "/categories/."):  # those are (or normalise to) the list
        assert_error(client.get(path), (404, 405, 422))
    assert_error(client.post(path.rstrip("/") + "/reload"), (404, 405, 422))


def test_invalid_name_is_422_and_unknown_is_404(client):
    assert_error(client.post("/inspect/" + "a" * 300, **multipart(PNG)), 422, "invalid_category")
    assert_error(client.post("/inspect/%2e%2e", **multipart(PNG)), 422, "invalid_category")
    assert_error(client.post("/inspect/gamma", **multipart(PNG)), 404, "unknown_category")
    assert_error(client.post("/categories/gamma/reload"), 404, "unknown_category")


def test_reload_never_reads_outside_the_root(client, tiny_artifacts, tmp_path):
    """A published-looking folder beside the root is never reachable through a name."""
    for name in ("..", "%2e%2e", "..%2F" + tiny_artifacts.name):
        r = client.post(f"/categories/{name}/reload")
        assert_error(r, (404, 422))
    names = {c["name"] for c in client.get("/categories").json()["categories"]}
    assert names == {"alpha", "beta"}


# -- routes and methods ---------------------------------------------------------------------------------


def test_unknown_route_and_method(client):
    assert_error(client.get("/nope"), 404, "not_found")
    body = assert_error(client.get("/inspect/alpha"), 405, "method_not_allowed")
    assert body["error"]
    assert assert_error(client.delete("/categories/alpha"), 405, "method_not_allowed")
