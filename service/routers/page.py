"""The page for the line: ``GET /`` and its static files (``GET /static/{name}``), no key needed.

Plain HTML, CSS and JavaScript modules from ``service/static/``, served by this process:
nothing is built, and nothing comes from elsewhere at run time (line PCs are often offline).
The Content-Security-Policy says so to the browser too: every script, style, image and
request is this server's own (images also ``data:`` and ``blob:``, which the page makes).
The files are read once, at import (a few tens of kB); any other name is a 404. Each has an
ETag, so a reload revalidates with a 304 instead of fetching the file again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.errors import ApiError

STATIC = Path(__file__).resolve().parents[1] / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new version shows after an upgrade
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    media_type: str
    etag: str

    @classmethod
    def read(cls, path: Path) -> StaticFile:
        body = path.read_bytes()
        return cls(body, f"{MEDIA_TYPES[path.suffix]}; charset=utf-8", f'"{hashlib.sha256(body).hexdigest()[:20]}"')


FILES = {p.name: StaticFile.read(p) for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES}

router = APIRouter(tags=["page"], include_in_schema=False)


def _serve(name: str, request: Request) -> Response:
    file = FILES.get(name)
    if file is None:
        raise ApiError(404, "not_found", f"no such file: /static/{name}"[:300])
    headers = {**HEADERS, "ETag": file.etag}
    if file.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(file.body, media_type=file.media_type, headers=headers)


@router.get("/")
async def page(request: Request) -> Response:
    return _serve("index.html", request)


@router.get("/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    return _serve(name, request)
