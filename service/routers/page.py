"""The page for the line: ``GET /`` and its static files (``GET /static/{name}``), no key needed.

Plain HTML, CSS and JavaScript modules from ``service/static/``, served by this process:
nothing is built, and nothing comes from elsewhere at run time (line PCs are often offline).
The Content-Security-Policy says so to the browser too: every script, style, image and
request is this server's own (images also ``data:`` and ``blob:``, which the page makes).
Only the files present in the folder at start-up are served; any other name is a 404.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

STATIC = Path(__file__).resolve().parents[1] / "static"
MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
FILES = {p.name: p for p in sorted(STATIC.iterdir()) if p.is_file() and p.suffix in MEDIA_TYPES}

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

router = APIRouter(tags=["page"], include_in_schema=False)


def _file(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise ApiError(404, "not_found", f"no such file: /static/{name}"[:300])
    return FileResponse(path, media_type=f"{MEDIA_TYPES[path.suffix]}; charset=utf-8", headers=HEADERS)


@router.get("/")
async def page() -> FileResponse:
    return _file("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    return _file(name)
