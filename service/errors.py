"""The one error shape, ``{"error": <message>, "code": <code>, "request_id": <id>}``, and its handlers.

Handlers never put a stack trace in a body. Unexpected exceptions become
``500 internal_error`` and are logged with the request id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service.errors")

REQUEST_ID_HEADER = "X-Request-ID"

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
    504: "deadline_exceeded",
}


class ApiError(Exception):
    """An expected failure with its HTTP status, machine-readable ``code`` and extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class PayloadTooLarge(StarletteHTTPException):
    """Raised from the body-limit middleware's ``receive`` once a body passes the limit.

    An ``HTTPException`` so that every layer in between (FastAPI, Starlette's form
    parser) lets it through to the handler unchanged.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the {limit} byte limit")


ERROR_CODE_HEADER = "X-Error-Code"  # also read by the metrics middleware (errors by code)


def request_id_of(scope_or_request: Request | Mapping) -> str:
    """The id the request-context middleware gave this request ("-" before it ran)."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return str(scope.get("state", {}).get("request_id", "-"))


def error_body(message: str, code: str, request_id: str) -> dict[str, str]:
    return {"error": message, "code": code, "request_id": request_id}


def error_response(
    status: int, code: str, message: str, request_id: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error response in the house shape, with ``X-Request-ID`` set."""
    all_headers = {REQUEST_ID_HEADER: request_id, ERROR_CODE_HEADER: code, **(headers or {})}
    return JSONResponse(error_body(message, code, request_id), status_code=status, headers=all_headers)


def internal_error_response(request_id: str) -> JSONResponse:
    return error_response(500, "internal_error", "internal server error", request_id)


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    if exc.status == 500:
        log.error("request %s: %s %s", request_id_of(request), exc.code, exc.message)
    elif exc.status > 500:
        log.info("request %s: %s %s", request_id_of(request), exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, request_id_of(request), exc.headers)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette/FastAPI ``HTTPException`` (404 no route, 405, 413 body...) in the house shape."""
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = f"no such resource: {request.method} {request.url.path}"[:300]
    headers = dict(exc.headers or {})
    if exc.status_code == 413:
        headers["Connection"] = "close"  # the rest of the body is never read
    return error_response(exc.status_code, code, message, request_id_of(request), headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 in the house shape; lists field locations and messages, never the input."""
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return error_response(422, "validation_error", "; ".join(parts) or "invalid request", request_id_of(request))


async def unhandled_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Last resort (Starlette's server-error middleware): log with the request id, answer 500."""
    rid = request_id_of(request)
    log.error("request %s failed: %s", rid, type(exc).__name__, exc_info=exc)
    return internal_error_response(rid)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler so that no response leaves without the error shape."""
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
