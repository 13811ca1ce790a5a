"""Pure ASGI middlewares: request context (id, metrics, last-resort errors) and the body limit.

Neither buffers a body nor wraps the app in Starlette's ``BaseHTTPMiddleware``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ERROR_CODE_HEADER, REQUEST_ID_HEADER, PayloadTooLarge, error_response, internal_error_response
from service.metrics import Metrics

log = logging.getLogger("service.http")

INSPECT_PREFIX = "/inspect/"
_INFER_RE = re.compile(r"^/v2/models/([^/]+)/infer$")
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def new_request_id(scope: Scope) -> str:
    """The client's ``X-Request-ID`` when it is short and plain, else a fresh random id."""
    given = _header(scope, b"x-request-id")
    if given and _CLIENT_ID_RE.fullmatch(given):
        return given
    return uuid.uuid4().hex


def _scored_category(path: str) -> str | None:
    """The category of a scoring request (``/inspect/{c}``, ``/v2/models/{c}/infer``), else None."""
    if path.startswith(INSPECT_PREFIX):
        return path[len(INSPECT_PREFIX):]
    match = _INFER_RE.match(path)
    return match.group(1) if match else None


class HttpMiddleware:
    """A pure ASGI middleware that handles HTTP requests (``handle``) and passes everything else on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestContextMiddleware(HttpMiddleware):
    """Gives each request an id (``scope['state']['request_id']``, echoed as ``X-Request-ID``),
    records the inspect metrics (count by status, duration, in-flight) and turns an
    exception that escaped every handler into ``500 internal_error``.

    ``category_label`` maps a requested category name to a bounded metrics label.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, category_label: Callable[[str], str]) -> None:
        super().__init__(app)
        self.metrics = metrics
        self.category_label = category_label

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = new_request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["t0"] = time.perf_counter()
        path: str = scope.get("path", "")
        label = _scored_category(path)
        label = self.category_label(label) if label is not None else None
        status = {"code": 500, "started": False, "error": None}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                headers = MutableHeaders(scope=message)
                status["error"] = headers.get(ERROR_CODE_HEADER)
                if REQUEST_ID_HEADER not in headers:
                    headers[REQUEST_ID_HEADER] = rid
            await send(message)

        if label is not None:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status["started"]:
                log.error("request %s failed after the response started", rid, exc_info=exc)
                raise
            log.error("request %s failed: %s", rid, type(exc).__name__, exc_info=exc)
            await internal_error_response(rid)(scope, receive, send_with_id)
        finally:
            if label is not None:
                self.metrics.in_flight.dec()
                self.metrics.observe_request(label, status["code"], time.perf_counter() - state["t0"], status["error"])


class BodyLimitMiddleware(HttpMiddleware):
    """413 for a body over ``max_bytes``: up front from ``Content-Length``, else while it streams.

    A streamed (chunked) body is counted as it arrives; the first chunk that passes
    the limit raises ``PayloadTooLarge`` out of ``receive`` so nothing more is read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = str(scope.get("state", {}).get("request_id", "-"))
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await error_response(400, "bad_request", "invalid Content-Length", rid)(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                response = error_response(
                    413, "payload_too_large", f"request body is over the {self.max_bytes} byte limit", rid,
                    {"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        return limited_receive
