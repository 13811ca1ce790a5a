"""The page's files as the server serves them (no browser: see test_page_browser.py for that):
no key needed, nothing from elsewhere, every file it loads is there, and it ships with the package."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.routers.page import FILES, STATIC
from service.settings import Settings
from tests.conftest import REPO

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(Settings(artifacts=tmp_path_factory.mktemp("no-artifacts"), api_key="s3cret"))
    with TestClient(app) as c:
        yield c


def referenced(text: str) -> set[str]:
    """Static file names an HTML or JS file loads: ``/static/x`` URLs and ``./x.js`` imports."""
    return set(re.findall(r'/static/([\w.-]+)', text)) | set(re.findall(r'from "\./([\w.-]+)"', text))


def test_the_page_loads_without_the_key_and_locks_down_its_sources(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/inspect/x").status_code == 405 and client.post("/inspect/x").status_code == 401


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_static_file_is_served_with_its_type(client, name):
    r = client.get(f"/static/{name}")
    assert r.status_code == 200 and r.content == (STATIC / name).read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}[(STATIC / name).suffix]
    assert r.headers["content-type"].startswith(expected)
    again = client.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_everything_the_page_loads_is_served_and_nothing_else_is():
    wanted, seen = {"index.html"}, set()
    while wanted - seen:
        name = (wanted - seen).pop()
        seen.add(name)
        wanted |= referenced((STATIC / name).read_text())
    assert wanted <= set(FILES), wanted - set(FILES)
    assert set(FILES) - wanted == set(), f"served but never loaded: {set(FILES) - wanted}"


def test_nothing_comes_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text().replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[\w.-]+\.[a-z]{2,}", text), f"{path.name} names another host"
        assert "@import" not in text and "<script>" not in text and " style=" not in text, path.name


def test_unknown_static_files_are_404_in_the_house_shape(client):
    for path in ("/static/nope.js", "/static/..%2Fapp.py", "/static/"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert set(r.json()) == {"error", "code", "request_id"}


def test_the_page_is_not_in_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)
    assert "/categories/{category}/recent" in paths


def test_the_static_files_ship_with_the_package_and_the_image():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["service"]
    assert all(any(fnmatch(f"static/{name}", g) for g in globs) for name in FILES)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not any(fnmatch("service/static/page.js", g) or g.startswith("service/static") for g in ignored)


def test_ci_installs_the_browser_and_the_test_extra_carries_playwright():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(d.startswith("playwright") for d in extra)
    ci = (REPO / ".ci" / "run").read_text()
    assert "install -y -qq chromium" in ci and "/usr/bin/chromium" in ci


def test_without_a_browser_the_browser_tests_fail_on_ci_and_skip_elsewhere(monkeypatch, tmp_path):
    from tests import browser

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run on CI: no Chromium"):
        browser.require_browser()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        browser.require_browser()
