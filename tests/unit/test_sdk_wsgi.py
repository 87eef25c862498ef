"""The SDK's WSGI middleware, through httpx's WSGI transport and a real wsgiref server on a loopback port."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "sdk" / "src"))

from tako_sdk import WSGIMiddleware


def inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = f"inner {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


@pytest.fixture
def tako_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAKO_APP", "blog")
    monkeypatch.setenv("TAKO_BUILD", "def5678_0badc0de")
    monkeypatch.setenv("TAKO_INSTANCE", "1")
    monkeypatch.setenv("ENV", "staging")


def client(app: Any) -> httpx.Client:
    return httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://app.test")


def test_status_answers_with_tako_fields(tako_env: None) -> None:
    with client(WSGIMiddleware(inner)) as c:
        r = c.get("/_tako/status")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    data = r.json()
    assert (data["app"], data["version"], data["instance"], data["env"]) == (
        "blog",
        "def5678_0badc0de",
        "1",
        "staging",
    )
    assert data["pid"] == os.getpid() and data["uptime"] >= 0


def test_other_requests_pass_through() -> None:
    with client(WSGIMiddleware(inner)) as c:
        assert c.get("/").text == "inner GET /"
        assert c.put("/_tako/status/x", content=b"1").text == "inner PUT /_tako/status/x"


def test_head_and_wrong_method() -> None:
    with client(WSGIMiddleware(inner)) as c:
        head = c.head("/_tako/status")
        delete = c.delete("/_tako/status")
    assert head.status_code == 200 and head.content == b""
    assert delete.status_code == 405 and delete.headers["allow"] == "GET, HEAD"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tako_env: None) -> Iterator[str]:
    """The wrapped app behind a real wsgiref HTTP server on 127.0.0.1:<random port>."""
    server: WSGIServer = make_server("127.0.0.1", 0, WSGIMiddleware(inner), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_real_server(served: str) -> None:
    with httpx.Client(base_url=served) as c:
        status = c.get("/_tako/status")
        other = c.get("/hello")
    assert status.json()["app"] == "blog"
    assert other.text == "inner GET /hello"


def test_env_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    from tako_sdk import env

    e = env({"ENV": "production", "TAKO_BUILD": "v1", "PORT": "8123", "TAKO_APP": "a", "TAKO_INSTANCE": "2"})
    assert (e.env, e.build, e.port, e.host, e.app, e.instance) == (
        "production",
        "v1",
        8123,
        "127.0.0.1",
        "a",
        "2",
    )
    assert e.is_production and e.under_tako and not e.is_development
    with pytest.raises(AttributeError):
        e.port = 1
    empty = env({})
    assert (empty.env, empty.build, empty.port, empty.app) == ("development", None, None, None)
    with pytest.raises(ValueError, match="PORT must be a port number"):
        env({"PORT": "eighty"})
    with pytest.raises(ValueError, match="between 1 and 65535"):
        env({"PORT": "70000"})
    monkeypatch.setenv("PORT", "9000")
    assert env().port == 9000
