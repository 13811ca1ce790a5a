"""Reliability cases not in test_bad_input.py: polyglot files, huge multipart part counts,
oversized headers, slow and vanishing senders, and a second server on a taken port.

The in-process cases use a TestClient; the transport-level ones (headers, slow sender,
disconnect, port clash) run against a real ``python -m cli.main serve`` process.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import time
import zipfile
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from service.uploads import MAX_FORM_FIELDS
from tests.conftest import REPO, wait_until
from tests.promtext import metric_value
from tests.servers import Server, running_server, serve_cmd, server_env

BODY_LIMIT = 200_000
REQUEST_TIMEOUT_S = 5.0  # the real server's deadline (covers the upload)
SETTINGS = {"max_body_bytes": BODY_LIMIT, "request_timeout_s": REQUEST_TIMEOUT_S}

RGB = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil.html", "<script>alert(1)</script>")
    return buf.getvalue()


PNG = encode(RGB, "PNG")
JPEG = encode(RGB, "JPEG")
HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"


def assert_error(r: httpx.Response, statuses: tuple[int, ...], codes: tuple[str, ...]) -> None:
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code", "request_id"} and body["code"] in codes, body
    assert "Traceback" not in r.text


@pytest.fixture(scope="module")
def client(one_torch_thread, request):
    settings = Settings(artifacts=request.getfixturevalue("tiny_artifacts"), torch_threads=1,
                        max_body_bytes=BODY_LIMIT)
    with TestClient(create_app(settings), client=("127.0.0.1", 50000)) as c:
        yield c


# -- polyglots: decode as the leading image or answer 400, never 500 ---------------------------------

POLYGLOTS = {
    "png+zip": (PNG + zip_bytes(), 200),
    "png+html": (PNG + HTML, 200),
    "jpeg+zip": (JPEG + zip_bytes(), 200),
    "jpeg+html": (JPEG + HTML, 200),
    "zip+png": (zip_bytes() + PNG, 400),  # a ZIP first: not an image
    "html+png": (HTML + PNG, 400),
    "png_inside_zip": (b"PK\x03\x04" + PNG, 400),
}


@pytest.mark.parametrize("name", list(POLYGLOTS))
def test_polyglot_files(client, name):
    data, status = POLYGLOTS[name]
    r = client.post("/inspect/alpha", files={"file": ("x.png", data, "image/png")}, params={"outputs": "none"})
    if status == 200:
        assert r.status_code == 200, r.text
        assert (r.json()["width"], r.json()["height"]) == (64, 48)
        assert "<script" not in r.text
    else:
        assert_error(r, (400,), ("invalid_image",))


# -- 1000 multipart parts: refused by the multipart limits, at the limit ----------------------------

def _many_parts(n: int, name: str, file: bool) -> tuple[list[bytes], str]:
    """The ``n`` parts of a multipart body, then its closing boundary, and the Content-Type."""
    boundary = "rb0undary"
    chunks = []
    for i in range(n):
        disp = f'form-data; name="{name}"' + (f'; filename="{i}.png"' if file else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + (b"x" if not file else b"\x89PNG")
                      + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return chunks, f"multipart/form-data; boundary={boundary}"


def post_streamed(client: TestClient, chunks: list[bytes], ctype: str) -> tuple[list[dict], int]:
    """POST ``chunks`` to /inspect/alpha straight into the ASGI app, one ``http.request`` message
    each; returns the messages the app sent and how many chunks it had read when it answered."""
    sent: list[dict] = []
    read = 0
    read_when_answered: list[int] = []

    async def call(app) -> None:
        pending = list(chunks)

        async def receive() -> dict:
            nonlocal read
            if pending:
                read += 1
                return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                read_when_answered.append(read)
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/inspect/alpha", "raw_path": b"/inspect/alpha", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", ctype.encode())], "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    client.portal.call(call, client.app)
    assert read_when_answered, sent
    return sent, read_when_answered[0]


@pytest.mark.parametrize("name,file,code", [("files", True, "too_many_images"), ("file", True, "too_many_images"),
                                            ("note", False, "too_many_parts")])
def test_thousand_parts(client, name, file, code):
    chunks, ctype = _many_parts(1000, name, file)
    body = b"".join(chunks)
    assert len(body) < BODY_LIMIT
    r = client.post("/inspect/alpha", content=body, headers={"Content-Type": ctype})
    assert_error(r, (413, 422), (code,))
    # Refused by the multipart limits as the first part over them arrives, not after parsing all 1000:
    # streamed one part per message, the answer comes before the part after that one is read.
    limit = client.app.state.settings.max_images_per_request if file else MAX_FORM_FIELDS
    sent, read = post_streamed(client, chunks, ctype)
    assert sent[0]["status"] == r.status_code
    assert code.encode() in b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert read <= limit + 1, f"read {read} of {len(chunks)} parts before answering (limit {limit})"


# -- a real server process ---------------------------------------------------------------------------


def metrics_text(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=30).text


def in_flight(base: str) -> float:
    return metric_value(metrics_text(base), "inspect_in_flight")


@pytest.fixture(scope="module")
def server(one_torch_thread, request, tmp_path_factory) -> Iterator[Server]:
    tiny = request.getfixturevalue("tiny_artifacts")
    root = tmp_path_factory.mktemp("reliab") / "artifacts"
    root.mkdir()
    shutil.copytree(tiny / "alpha", root / "alpha", symlinks=True)
    with running_server(root, root.parent / "server.log", SETTINGS) as server:
        yield server


def raw_request_head(port: int, length: int, path: str = "/inspect/alpha") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def wait_in_flight_zero(base: str) -> None:
    wait_until(lambda: in_flight(base) == 0, lambda: f"inspect_in_flight to return to 0 (now {in_flight(base)})",
               interval=0.1)


def assert_healthy(base: str) -> None:
    """The server answers /healthz (the event loop is not stuck). Not timed: a wedged loop fails on the
    generous timeout instead."""
    assert httpx.get(f"{base}/healthz", timeout=30).status_code == 200


def test_unicode_category_over_http(server):
    for path in ("/inspect/%E2%9C%93", "/inspect/%F0%9F%92%A9", "/inspect/%C3%A9t%C3%A9"):
        r = httpx.post(server.base + path, content=PNG, headers={"Content-Type": "image/png"}, timeout=10)
        assert_error(r, (404, 422), ("invalid_category", "unknown_category"))
    r = httpx.post(server.base + "/inspect/%FF%FE", content=PNG, headers={"Content-Type": "image/png"}, timeout=10)
    assert r.status_code in (400, 404, 422), r.text  # invalid UTF-8 in the path


def _header_reply(port: int, size: int, end_held_back: bool) -> bytes:
    """Send a request whose ``X-Big`` header is ``size`` bytes; return the reply's status line.

    ``end_held_back``: the header block's ending is not sent before the server answers (as from a slow
    or remote client), so the server sees an incomplete block. Otherwise it is sent at once, header end
    and all. A server that resets the connection while the client still sends has already queued its
    reply, which is read all the same.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size
        try:
            s.sendall(head if end_held_back else head + b"\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError):
            pass  # refused while still sending: the reply is in the receive queue
        reply = b""
        while b"\r\n" not in reply:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
        return reply.split(b"\r\n", 1)[0]


@pytest.mark.parametrize("size,end_held_back", [(20_000, True), (100_000, True), (1_000_000, False),
                                                (8_000_000, False)])
def test_oversized_request_header(server, size, end_held_back):
    """The server runs uvicorn on h11 (``cmd_serve`` says so, httptools installed or not): a header block over h11's 16 KiB incomplete-event
    limit is refused with 400 as soon as the server has read over 16 KiB of it without its end:
    a held-back end, or a block too big for one socket read. Note: h11 only checks
    *incomplete* events, so a ~100 kB header that lands complete in one socket read is
    accepted; the limit is not configurable through our CLI (uvicorn's
    ``h11_max_incomplete_event_size``)."""
    status_line = _header_reply(server.port, size, end_held_back)
    assert status_line.split(b" ", 2)[:2] in ([b"HTTP/1.1", b"400"], [b"HTTP/1.1", b"431"]), status_line
    assert_healthy(server.base)


def test_slow_sender_times_out_and_does_not_block_others(server):
    """1 byte each time 0.2 s pass without a reply: others are served meanwhile; the request
    deadline (which covers the upload) answers 504 deadline_exceeded while the body is still
    coming in; in-flight returns to 0."""
    length = 10_000  # at 5 bytes/s, over half an hour of upload
    wait_in_flight_zero(server.base)
    before = metrics_text(server.base)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(raw_request_head(server.port, length) + b"\0")
        sent = 1
        # Others are served while it is in flight: /healthz answers between two in-flight readings.
        wait_until(lambda: in_flight(server.base) >= 1, "the slow request to be in flight")
        assert_healthy(server.base)
        assert in_flight(server.base) >= 1, "the slow request ended before /healthz answered: nothing shown"
        reply = b""
        s.settimeout(0.2)  # the sender's pace: the next byte goes when no reply came for 0.2 s
        guard = time.monotonic() + 60  # a bound for a wedged test, not a measurement
        while sent < length and time.monotonic() < guard:
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                try:
                    s.sendall(b"\0")
                    sent += 1
                except (BrokenPipeError, ConnectionResetError):
                    pass  # closed after its answer: read it
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            reply += chunk
            if b"\r\n\r\n" in reply and reply.endswith(b"}"):
                break
    assert reply.startswith(b"HTTP/1.1 504"), (sent, reply[:300])
    assert b"deadline_exceeded" in reply and b"while reading the body" in reply
    assert sent < length  # answered while the body was still coming in: the deadline covers the upload
    after = metrics_text(server.base)
    labels = {"category": "alpha"}
    assert metric_value(after, "inspect_requests_total", status="504", **labels) == \
        metric_value(before, "inspect_requests_total", status="504", **labels) + 1
    # The server's own clock: the 504 came at its deadline, not before.
    assert metric_value(after, "inspect_request_duration_seconds_count", **labels) == \
        metric_value(before, "inspect_request_duration_seconds_count", **labels) + 1
    served_s = (metric_value(after, "inspect_request_duration_seconds_sum", **labels)
                - metric_value(before, "inspect_request_duration_seconds_sum", **labels))
    assert served_s >= REQUEST_TIMEOUT_S
    wait_in_flight_zero(server.base)
    assert_healthy(server.base)


def test_client_disconnect_mid_upload(server):
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(raw_request_head(server.port, len(PNG)) + PNG[: len(PNG) // 2])
            wait_until(lambda: in_flight(server.base) >= 1, "the half-sent request to be in flight")
        # the socket is closed here, half the body sent, the server reading it
        wait_in_flight_zero(server.base)
    r = httpx.post(f"{server.base}/inspect/alpha", content=PNG, headers={"Content-Type": "image/png"},
                   params={"outputs": "none"}, timeout=30)
    assert r.status_code == 200, r.text
    assert "Traceback" not in server.log.read_text()


def test_second_server_on_the_same_port_exits_clearly(server):
    proc = subprocess.run(serve_cmd(server.root, server.port), cwd=REPO, env=server_env(SETTINGS),
                          capture_output=True, timeout=120)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode != 0, out[-2000:]
    # It gave up at its one bind attempt (it does not retry until some timeout).
    assert out.lower().count("address already in use") == 1, out[-2000:]
    assert_healthy(server.base)  # the first one is unharmed
